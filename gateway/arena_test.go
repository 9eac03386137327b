package gateway

import (
	"bytes"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"unsafe"
)

// Messages built from one arena stay as they were built while thousands
// more are built after them: of every size (blocks fill and are replaced,
// large ones bypass the arena), in both formats, with header lists that
// outgrow their room, and with envelopes that do.
func TestArenaMessagesStayIntact(t *testing.T) {
	var a arena
	type built struct {
		rec  *Record
		rt   Routed
		got  Message
		want Message
	}
	var all []built
	for i := range 5000 {
		rec := sampleRecord()
		rec.Device = fmt.Sprintf("truck-%d", i)
		switch i % 7 {
		case 0:
			rec.Payload = bytes.Repeat([]byte{0xfe}, i%3000) // not JSON: base64, the estimate's upper end
		case 1:
			rec.Payload = []byte(fmt.Sprintf(`{"seq":%d,"s":%q}`, i, strings.Repeat("é\"", i%500)))
		case 2:
			for j := range i % 20 { // more headers than the room held
				rec.Properties = append(rec.Properties, Property{fmt.Sprintf("p%d", j), strings.Repeat("v", j)})
			}
		case 3:
			rec.Ref = map[string]any{"fleet": "north", "route": strings.Repeat("r", i%2000)}
			rec.RefStale = true
		case 4:
			rec.Payload = bytes.Repeat([]byte("x"), 20000) // larger than an arena takes
		}
		rt := Routed{Topic: "iot.position", Key: rec.Device, Format: FormatEnvelope}
		if i%5 == 0 {
			rt.Format = FormatRaw
		}
		all = append(all, built{rec: rec, rt: rt, got: buildMessage(&a, rec, rt, "gw-1", Offset(i))})
	}
	for i, b := range all {
		want := BuildMessage(b.rec, b.rt, "gw-1", Offset(i))
		if !reflect.DeepEqual(b.got, want) {
			t.Fatalf("message %d changed after later ones were built:\n got %q %q\nwant %q %q", i, b.got.Key, b.got.Value, want.Key, want.Value)
		}
	}
}

// Blocks cut for a batch and recycled once it is written are reused, and
// the messages of batches not yet recycled stay as they were built while
// later batches fill the reused blocks: two batches in flight, as in the
// pipeline (one being written, one ready).
func TestArenaRecycle(t *testing.T) {
	var a arena
	type batchOf struct {
		got, want []Message
		blocks    retired
	}
	current := map[*byte]int{} // block start -> times it became the current block
	var last *byte
	var flight []batchOf
	for k := range 60 {
		var b batchOf
		for i := range 40 + k%7*30 {
			rec := sampleRecord()
			rec.Device = fmt.Sprintf("truck-%d-%d", k, i)
			rec.Payload = []byte(fmt.Sprintf(`{"k":%d,"i":%d,"s":%q}`, k, i, strings.Repeat("x", (k*i)%900)))
			rt := Routed{Topic: "iot.position", Key: rec.Device, Format: FormatEnvelope}
			b.got = append(b.got, buildMessage(&a, rec, rt, "gw-1", Offset(i)))
			b.want = append(b.want, BuildMessage(rec, rt, "gw-1", Offset(i)))
			if blk := unsafe.SliceData(a.bytes.block[:1]); blk != last {
				current[blk]++
				last = blk
			}
		}
		b.blocks = a.cut()
		flight = append(flight, b)
		if len(flight) == 3 {
			// The oldest is acknowledged: check all in flight, then
			// recycle the oldest's blocks.
			for j, f := range flight {
				for i := range f.got {
					if !reflect.DeepEqual(f.got[i], f.want[i]) {
						t.Fatalf("batch %d message %d changed while in flight:\n got %q\nwant %q", k-2+j, i, f.got[i].Value, f.want[i].Value)
					}
				}
			}
			a.recycle(flight[0].blocks)
			flight = flight[1:]
		}
	}
	reused := 0
	for _, n := range current {
		if n > 1 {
			reused++
		}
	}
	if reused == 0 {
		t.Errorf("no block was reused over %d blocks", len(current))
	}
}
