package gateway

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"
)

func sampleRecord() *Record {
	return &Record{
		ID: NewID(time.Unix(1700000000, 0)), Device: "truck-7", Stream: "position", Protocol: ProtocolMQTT,
		Topic: "devices/truck-7/position", ReceivedAt: time.Unix(1700000000, 123456789).UTC(), QoS: 1,
		ContentType: "application/json", Properties: []Property{{"trace", "abc"}, {"k", ""}},
		Payload: []byte(`{"lat":47.1}`),
	}
}

func TestRecordRoundTrip(t *testing.T) {
	cases := []*Record{
		sampleRecord(),
		{ReceivedAt: time.Unix(0, 0).UTC()},
		{Device: "d", Payload: bytes.Repeat([]byte{0xff}, 70000), ReceivedAt: time.Unix(-5, 0).UTC()},
	}
	for i, want := range cases {
		b := EncodeRecord(nil, want)
		if got := EncodedSize(want); got < len(b) {
			t.Errorf("case %d: EncodedSize %d < encoded %d", i, got, len(b))
		}
		var got Record
		if err := DecodeRecord(b, &got); err != nil {
			t.Fatalf("case %d: decode: %v", i, err)
		}
		if want.Payload == nil {
			want.Payload = []byte{}
		}
		if !reflect.DeepEqual(&got, want) {
			t.Errorf("case %d: got %+v, want %+v", i, got, *want)
		}
	}
}

func TestDecodeRecordRejectsCorruption(t *testing.T) {
	good := EncodeRecord(nil, sampleRecord())
	cases := map[string][]byte{
		"empty":         {},
		"bad version":   append([]byte{9}, good[1:]...),
		"truncated":     good[:len(good)-3],
		"trailing data": append(append([]byte{}, good...), 0),
		"huge length":   {1, 0xff, 0xff, 0xff, 0xff, 0x0f},
	}
	for name, b := range cases {
		var r Record
		if err := DecodeRecord(b, &r); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: err = %v, want ErrCorrupt", name, err)
		}
	}
}

func FuzzDecodeRecord(f *testing.F) {
	f.Add(EncodeRecord(nil, sampleRecord()))
	f.Add([]byte{1})
	f.Add([]byte{1, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x7f})
	f.Fuzz(func(t *testing.T, b []byte) {
		var r Record
		if err := DecodeRecord(b, &r); err != nil {
			return
		}
		// Whatever decodes must re-encode to the same bytes.
		if again := EncodeRecord(nil, &r); !bytes.Equal(again, b) {
			t.Fatalf("re-encode differs:\n%x\n%x", b, again)
		}
	})
}

func TestNewIDUniqueAndSortable(t *testing.T) {
	seen := map[string]bool{}
	prev := ""
	for i := 0; i < 10000; i++ {
		id := NewID(time.UnixMilli(int64(1700000000000 + i)))
		if len(id) != 26 || seen[id] {
			t.Fatalf("bad or repeated id %q", id)
		}
		if id <= prev {
			t.Fatalf("ids not sorted by time: %q after %q", id, prev)
		}
		seen[id], prev = true, id
	}
}

// putIDReference is the ULID encoding done the long way: the 128 bits in
// two words, shifted through both for each character.
func putIDReference(out *[IDLen]byte, ms, r1, r2 uint64) {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], ms<<16)
	b[6], b[7] = byte(r1>>8), byte(r1)
	binary.BigEndian.PutUint64(b[8:], r2)
	hi := binary.BigEndian.Uint64(b[:8])
	lo := binary.BigEndian.Uint64(b[8:])
	for i := 25; i >= 0; i-- {
		out[i] = crockford[lo&31]
		lo = lo>>5 | hi<<59
		hi >>= 5
	}
}

func TestPutIDMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	cases := [][3]uint64{{0, 0, 0}, {1<<48 - 1, 0xffff, 1<<64 - 1}, {1 << 47, 1, 1 << 63}, {1<<48 | 5, 1<<16 | 7, 9}}
	for range 10000 {
		cases = append(cases, [3]uint64{r.Uint64(), r.Uint64(), r.Uint64()})
	}
	for _, c := range cases {
		var got, want [IDLen]byte
		putID(&got, c[0], c[1], c[2])
		putIDReference(&want, c[0], c[1], c[2])
		if got != want {
			t.Fatalf("putID(%#x, %#x, %#x) = %s, want %s", c[0], c[1], c[2], got[:], want[:])
		}
	}
}

func BenchmarkPutID(b *testing.B) {
	now := time.Now()
	var out [IDLen]byte
	for b.Loop() {
		PutID(&out, now)
	}
}

func TestParseSize(t *testing.T) {
	cases := []struct {
		in   string
		want Size
		bad  bool
	}{
		{"4096", 4096, false}, {"64KiB", 64 << 10, false}, {"512MiB", 512 << 20, false},
		{"1GB", 1e9, false}, {"2 gib", 2 << 30, false}, {"1.5KiB", 1536, false},
		{"", 0, true}, {"-1", 0, true}, {"lots", 0, true}, {"5 parsecs", 0, true},
	}
	for _, c := range cases {
		got, err := ParseSize(c.in)
		if (err != nil) != c.bad || got != c.want {
			t.Errorf("ParseSize(%q) = %v, %v", c.in, got, err)
		}
	}
	if s := Size(512 << 20).String(); s != "512MiB" {
		t.Errorf("String = %s", s)
	}
}
