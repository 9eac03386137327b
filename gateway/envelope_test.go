package gateway

import (
	"bytes"
	"encoding/json"
	"fmt"
	"testing"
	"unicode/utf8"
)

func TestEnvelope(t *testing.T) {
	rec := sampleRecord()
	rec.Ref = map[string]any{"fleet": "north", "route": map[string]any{"name": "A1"}}
	rec.RefStale = true
	m := BuildMessage(rec, Routed{Topic: "iot.position", Key: "truck-7", Format: FormatEnvelope}, "gw-1", 5)
	var env map[string]any
	if err := json.Unmarshal(m.Value, &env); err != nil {
		t.Fatalf("envelope is not JSON: %v\n%s", err, m.Value)
	}
	want := map[string]any{"id": rec.ID, "device": "truck-7", "stream": "position", "protocol": "mqtt",
		"topic": "devices/truck-7/position", "received_at": "2023-11-14T22:13:20.123456789Z", "ref_stale": true}
	for k, v := range want {
		if env[k] != v {
			t.Errorf("%s = %v, want %v", k, env[k], v)
		}
	}
	if p, _ := env["payload"].(map[string]any); p["lat"] != 47.1 {
		t.Errorf("payload = %v", env["payload"])
	}
	if r, _ := env["ref"].(map[string]any); r["fleet"] != "north" {
		t.Errorf("ref = %v", env["ref"])
	}
	hs := map[string]string{}
	for _, h := range m.Headers {
		hs[h.Key] = string(h.Value)
	}
	for k, v := range map[string]string{HeaderID: rec.ID, HeaderDevice: "truck-7", HeaderProtocol: "mqtt",
		HeaderTopic: rec.Topic, HeaderGateway: "gw-1", HeaderReceivedAt: "2023-11-14T22:13:20.123456789Z",
		"trace": "abc", HeaderContentType: "application/json", HeaderRefStale: "true"} {
		if hs[k] != v {
			t.Errorf("header %s = %q, want %q", k, hs[k], v)
		}
	}
}

func TestEnvelopeNonJSONPayload(t *testing.T) {
	rec := sampleRecord()
	for _, p := range [][]byte{{0, 1, 2, 0xff}, []byte("not json"), {}, []byte("{\n \"a\": 1\n}\n")} {
		rec.Payload = p
		v := AppendEnvelope(nil, rec)
		var env map[string]any
		if err := json.Unmarshal(v, &env); err != nil {
			t.Fatalf("payload %q: envelope not JSON: %v", p, err)
		}
		if json.Valid(p) && len(p) > 0 {
			if env["payload"] == nil {
				t.Errorf("payload %q not embedded", p)
			}
		} else if env["payload_b64"] == nil {
			t.Errorf("payload %q not base64", p)
		}
	}
}

func TestRawFormatRefHeaders(t *testing.T) {
	rec := sampleRecord()
	rec.Ref = map[string]any{"fleet": "north"}
	m := BuildMessage(rec, Routed{Topic: "iot.raw", Key: "truck-7", Format: FormatRaw}, "gw", 1)
	if string(m.Value) != string(rec.Payload) {
		t.Errorf("raw value = %s", m.Value)
	}
	found := false
	for _, h := range m.Headers {
		if h.Key == "iotgw-ref-fleet" && string(h.Value) == "north" {
			found = true
		}
	}
	if !found {
		t.Error("no iotgw-ref-fleet header")
	}
}

func FuzzEnvelope(f *testing.F) {
	f.Add("truck-7", "devices/truck-7/x", []byte(`{"a":1}`))
	f.Add("\xff\x00\"", "\u2028", []byte{0xff})
	f.Fuzz(func(t *testing.T, device, topic string, payload []byte) {
		rec := &Record{ID: "x", Device: device, Topic: topic, Protocol: "mqtt", Payload: payload}
		v := AppendEnvelope(nil, rec)
		if !utf8.Valid(v) || !json.Valid(v) {
			t.Fatalf("invalid envelope %q", v)
		}
	})
}

// BenchmarkBuildMessage builds the messages of a 1000-record batch of a
// simulated truck's position records, as the pipeline does (from an arena)
// and as BuildMessage does.
func BenchmarkBuildMessage(b *testing.B) {
	rec := sampleRecord()
	rec.Payload = []byte(`{"device":"truck-0007","seq":1846,"ts":"2026-11-26T05:50:37.464560421Z","run":"bench","lat":53.551086,"lon":9.993682,"speed_kmh":81.4,"heading":212.5,"odometer_km":10231.7}`)
	rt := Routed{Topic: "iot.position", Key: "truck-7", Format: FormatEnvelope}
	for _, withArena := range []bool{true, false} {
		b.Run(fmt.Sprintf("arena=%v", withArena), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				var a *arena
				if withArena {
					a = &arena{}
				}
				msgs := make([]Message, 0, 1000)
				for i := range 1000 {
					msgs = append(msgs, buildMessage(a, rec, rt, "gw-1", Offset(i)))
				}
			}
		})
	}
}

// FuzzAppendJSONString checks the quoting against encoding/json's reading
// of it: every string comes back as itself, invalid UTF-8 as U+FFFD.
func FuzzAppendJSONString(f *testing.F) {
	for _, s := range []string{"", "truck-0007", `a"b\\c`, "tab\there\n", "\x00\x1f\x7f", "ünïcödé", "\u2028\u2029", "bad\xffutf8", "\xe2\x80"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b := appendJSONString([]byte("x"), s)
		if b[0] != 'x' {
			t.Fatalf("dst overwritten: %q", b)
		}
		var got string
		if err := json.Unmarshal(b[1:], &got); err != nil {
			t.Fatalf("%q quoted as %q: %v", s, b[1:], err)
		}
		// Converting to runes turns each invalid byte into U+FFFD too.
		if want := string([]rune(s)); got != want {
			t.Fatalf("%q quoted as %q, reads back as %q", s, b[1:], got)
		}
		if !utf8.Valid(b) || bytes.ContainsAny(b, "\u2028\u2029") {
			t.Fatalf("%q quoted as %q: not plain UTF-8 text", s, b[1:])
		}
	})
}

// BenchmarkAppendJSONString quotes a topic and a record id, strings with
// nothing to escape like most an envelope holds.
func BenchmarkAppendJSONString(b *testing.B) {
	buf := make([]byte, 0, 256)
	for b.Loop() {
		buf = appendJSONString(buf[:0], "devices/truck-0007/position")
		buf = appendJSONString(buf, "01KAXJ3Q5ZB7R0M2N4P6S8T0V2")
	}
}
