//go:build amd64 && !amd64.v3

// The golden payloads were made on amd64 without fused multiply-adds. Other
// architectures (and GOAMD64=v3) fuse x*y+z, which moves the physics by an
// ulp now and then and, a few thousand steps later, a payload digit.

package simulator

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

var updateGolden = flag.Bool("update", false, "rewrite testdata/payloads.golden from the current code")

// goldenDevices are the generators whose payloads are pinned: trucks at
// one, ten and a thirtieth of a message per simulated second (one, a few
// and many physics ticks per step) and sensors a minute apart.
func goldenDevices(t testing.TB) []struct {
	id  string
	gen generator
} {
	devs := testFleet(t, Options{Trucks: 3, Sensors: 2, Seed: 7})
	return []struct {
		id  string
		gen generator
	}{
		{devs[0].ID, newTruck(&devs[0], 7, 1)},
		{devs[1].ID, newTruck(&devs[1], 7, 0.1)},
		{devs[2].ID, newTruck(&devs[2], 7, 30)},
		{devs[3].ID, newSensor(&devs[3], 7, 60)},
		{devs[4].ID, newSensor(&devs[4], 7, 60)},
	}
}

// goldenTime is the ts of message i: seconds apart by a varying step, in a
// zone other than UTC, with fractions that end in 0 to 9 zeros, so every
// way RFC 3339 trims a fraction shows up.
func goldenTime(i int) time.Time {
	nanos := (int64(i)*987654321 + 13) % 1e9
	for range i % 10 {
		nanos -= nanos % 10
		nanos /= 10
	}
	for range i % 10 {
		nanos *= 10
	}
	return time.Unix(1767323045+int64(i)*37/10, nanos).In(time.FixedZone("CET", 3600))
}

// goldenPayloads writes, per device, the first few payloads in full and a
// digest of many more.
func goldenPayloads(t testing.TB) []byte {
	const shown, hashed = 30, 60000
	var out bytes.Buffer
	var payload []byte
	for _, d := range goldenDevices(t) {
		h := sha256.New()
		w := newPayloadWriter(d.id, "")
		for i := range hashed {
			w.run = "r1"
			if i%7 == 3 {
				w.run = ""
			}
			stream, body := d.gen.next()
			payload = w.append(payload[:0], uint64(i+1), goldenTime(i), body)
			fmt.Fprintf(h, "%s %s\n", stream, payload)
			if i < shown {
				fmt.Fprintf(&out, "%s %s\n", stream, payload)
			}
		}
		fmt.Fprintf(&out, "%s: sha256 %x over %d payloads\n", d.id, h.Sum(nil), hashed)
	}
	return out.Bytes()
}

// TestPayloadsGolden pins the payload bytes for a seed: speed-ups of the
// generators and encoders must not change what a consumer receives.
func TestPayloadsGolden(t *testing.T) {
	path := filepath.Join("testdata", "payloads.golden")
	got := goldenPayloads(t)
	if *updateGolden {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -run TestPayloadsGolden -update to create it)", err)
	}
	if bytes.Equal(got, want) {
		return
	}
	g, w := bufio.NewScanner(bytes.NewReader(got)), bufio.NewScanner(bytes.NewReader(want))
	for line := 1; ; line++ {
		gok, wok := g.Scan(), w.Scan()
		if !gok && !wok {
			break
		}
		if g.Text() != w.Text() {
			t.Fatalf("%s line %d:\n got %s\nwant %s", path, line, g.Text(), w.Text())
		}
	}
	t.Fatalf("%s differs", path)
}
