package gateway

import (
	"bytes"
	"fmt"
	"reflect"
	"strings"
	"testing"
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
