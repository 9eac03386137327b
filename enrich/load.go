package enrich

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// loadChunk is how many keys one MULTI/EXEC pipeline of Load writes.
const loadChunk = 500

// Summary is what Load wrote.
type Summary struct {
	Devices    int            // device hashes written
	Rows       map[string]int // lookup rows written, by table
	Skipped    int            // rows with no fields: nothing to write (Redis has no empty hash)
	Keys       int            // keys written in all
	RoundTrips int            // pipelines executed
	Published  bool           // whether "*" was published on Invalidate.Channel
	Duration   time.Duration
}

// Load imports a YAML or CSV reference data file (the formats of backend
// "file") into Redis: one hash per device at opts.Key and one per lookup
// row at its lookup's key, each replacing what the key held (DEL and HSET
// in one MULTI/EXEC, so readers never see a half-written hash). Keys not
// in the file are left alone. Then it publishes "*" on
// opts.Invalidate.Channel so running gateways re-read what they cached.
// Progress and a summary go to w. Tables no lookup reads are reported and
// skipped, since no key pattern names them.
func Load(ctx context.Context, opts Options, path string, w io.Writer) (Summary, error) {
	begin := time.Now()
	sum := Summary{Rows: map[string]int{}}
	opts.SetDefaults()
	if err := opts.Validate(); err != nil {
		return sum, err
	}
	d, err := readRefFile(path, opts.Lookups)
	if err != nil {
		return sum, err
	}
	unused, missing := d.unusedTables(opts.Lookups)
	fmt.Fprintf(w, "%s: %d devices, %d lookup rows\n", path, len(d.devices), d.rowCount())
	for _, t := range unused {
		fmt.Fprintf(w, "skipping table %q: no enrich.lookups entry reads it\n", t)
	}
	for _, t := range missing {
		fmt.Fprintf(w, "note: table %q (enrich.lookups) is not in the file\n", t)
	}

	type item struct {
		key    string
		fields hash
		table  string
	}
	var items []item
	for _, id := range slices.Sorted(maps.Keys(d.devices)) {
		items = append(items, item{keyFor(opts.Key, id), d.devices[id], devicesTable})
	}
	done := map[string]bool{}
	for _, l := range opts.Lookups {
		if done[l.Table+"\x00"+l.Key] {
			continue
		}
		done[l.Table+"\x00"+l.Key] = true
		rows := d.tables[l.Table]
		for _, id := range slices.Sorted(maps.Keys(rows)) {
			items = append(items, item{keyFor(l.Key, id), rows[id], l.Table})
		}
	}

	client, err := newClient(opts.Redis, false)
	if err != nil {
		return sum, err
	}
	defer client.Close()
	addrs := strings.Join(opts.Redis.addrs(), ",")
	if err := client.Ping(ctx).Err(); err != nil {
		return sum, fmt.Errorf("load reference data: redis %s: %w", addrs, err)
	}

	for start := 0; start < len(items); start += loadChunk {
		chunk := items[start:min(start+loadChunk, len(items))]
		written := 0
		_, err := client.TxPipelined(ctx, func(p redis.Pipeliner) error {
			for _, it := range chunk {
				if len(it.fields) == 0 {
					continue
				}
				args := make([]any, 0, 2*len(it.fields))
				for _, f := range slices.Sorted(maps.Keys(it.fields)) {
					args = append(args, f, it.fields[f])
				}
				p.Del(ctx, it.key)
				p.HSet(ctx, it.key, args...)
				written++
			}
			return nil
		})
		sum.RoundTrips++
		if err != nil {
			return sum, fmt.Errorf("load reference data into redis %s: %w", addrs, err)
		}
		for _, it := range chunk {
			switch {
			case len(it.fields) == 0:
				sum.Skipped++
				fmt.Fprintf(w, "skipping %s: no fields\n", it.key)
			case it.table == devicesTable:
				sum.Devices++
			default:
				sum.Rows[it.table]++
			}
		}
		sum.Keys += written
		fmt.Fprintf(w, "wrote %d/%d keys\n", min(start+len(chunk), len(items)), len(items))
	}

	if ch := opts.Invalidate.Channel; ch != "" {
		if err := client.Publish(ctx, ch, "*").Err(); err != nil {
			return sum, fmt.Errorf("publish invalidation on %s: %w", ch, err)
		}
		sum.RoundTrips++
		sum.Published = true
	}
	sum.Duration = time.Since(begin)
	fmt.Fprintf(w, "loaded %d devices and %d lookup rows (%d keys) into redis %s in %d round trips, %s",
		sum.Devices, sumRows(sum.Rows), sum.Keys, addrs, sum.RoundTrips, sum.Duration.Round(time.Millisecond))
	if sum.Published {
		fmt.Fprintf(w, "; published invalidation on %s", opts.Invalidate.Channel)
	}
	fmt.Fprintln(w)
	return sum, nil
}

// keyFor expands a validated key pattern for id.
func keyFor(pattern, id string) string { return mustTemplate(pattern).key(id) }

func sumRows(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}
