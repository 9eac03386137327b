//go:build integration

package e2e

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/iotgw/iotgw/gateway"
)

// The sink encodes its record batches itself (gateway/recordbatch.go).
// Written with each compression the gateway offers, the real broker takes
// them (it checks each batch's CRC and decompresses to validate it), and
// kcat (librdkafka, not kafka-go) reads back every record: key, value,
// header, partition, and order within the partition.
func TestKafkaSinkCompression(t *testing.T) {
	broker := kafkaAddr(t)
	prefix := uniqueTopicPrefix(t)
	for _, codec := range []string{"none", "gzip", "snappy", "lz4", "zstd"} {
		t.Run(codec, func(t *testing.T) {
			topic := prefix + "." + codec
			sink, ctx := newTopicSink(t, gateway.KafkaOptions{Brokers: []string{broker}, Compression: codec}, 1000, topic)
			const n = 600
			msgs := make([]gateway.Message, n)
			for i := range msgs {
				msgs[i] = gateway.Message{Topic: topic, Key: []byte(fmt.Sprintf("truck-%d", i%10)),
					Value:   []byte(fmt.Sprintf(`{"i":%d,"codec":"%s","pad":"%s"}`, i, codec, strings.Repeat("x", i%50))),
					Headers: []gateway.Header{{Key: "iotgw-seq", Value: []byte(strconv.Itoa(i))}}}
			}
			// Two Writes, so a partition gets two batches. The first may
			// meet a leader not yet elected: what the sink reports for
			// retry is written again, and only that.
			for _, part := range [][]gateway.Message{msgs[:n/2], msgs[n/2:]} {
				for try := 0; len(part) > 0; try++ {
					err := sink.Write(ctx, part)
					var we *gateway.WriteError
					switch {
					case err == nil:
						part = nil
					case try == 50:
						t.Fatal(err)
					case errors.As(err, &we):
						if len(we.Permanent) > 0 {
							t.Fatal(err)
						}
						var again []gateway.Message
						for _, i := range we.Retry {
							again = append(again, part[i])
						}
						part = again
					}
					if len(part) > 0 {
						time.Sleep(200 * time.Millisecond)
					}
				}
			}

			kctx, kcancel := context.WithTimeout(ctx, 30*time.Second)
			defer kcancel()
			out, err := exec.CommandContext(kctx, "kcat", "-b", broker, "-C", "-t", topic, "-o", "beginning", "-e", "-q",
				"-f", "%p|%k|%h|%s\n").Output()
			if err != nil {
				t.Fatalf("kcat: %v\n%s", err, out)
			}
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			if len(lines) != n {
				t.Fatalf("kcat read %d records, want %d", len(lines), n)
			}
			last := map[string]int{}
			partOf := map[string]string{}
			seen := map[int]bool{}
			for _, l := range lines {
				f := strings.SplitN(l, "|", 4)
				if len(f) != 4 {
					t.Fatalf("kcat line %q", l)
				}
				i, err := strconv.Atoi(strings.TrimPrefix(f[2], "iotgw-seq="))
				if err != nil || i < 0 || i >= n || seen[i] {
					t.Fatalf("record %q: header %q", l, f[2])
				}
				seen[i] = true
				m := msgs[i]
				if f[1] != string(m.Key) || f[3] != string(m.Value) {
					t.Errorf("record %d: key %q value %q, want %q %q", i, f[1], f[3], m.Key, m.Value)
				}
				if p, ok := partOf[f[1]]; ok && p != f[0] {
					t.Errorf("key %s in partitions %s and %s", f[1], p, f[0])
				}
				partOf[f[1]] = f[0]
				if prev, ok := last[f[0]]; ok && i <= prev {
					t.Errorf("partition %s: record %d after %d", f[0], i, prev)
				}
				last[f[0]] = i
			}
			if len(last) != 3 {
				t.Errorf("records in %d partitions, want 3", len(last))
			}
		})
	}
}
