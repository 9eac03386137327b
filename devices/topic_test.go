package devices

import (
	"strings"
	"testing"
)

func TestParseTopic(t *testing.T) {
	tests := []struct {
		topic          string
		device, stream string
		ok             bool
	}{
		{"devices/truck-1/gps", "truck-1", "gps", true},
		{"devices/truck-1/gps/raw/1", "truck-1", "gps", true},
		{"devices/truck-1/gps/", "truck-1", "gps", true},
		{"devices/aa:bb:cc/temp.c", "aa:bb:cc", "temp.c", true},
		{"devices/truck-1/commands", "truck-1", "commands", true},
		{"devices/truck-1", "", "", false},
		{"devices/truck-1/", "", "", false},
		{"devices//gps", "", "", false},
		{"devices/", "", "", false},
		{"devices", "", "", false},
		{"", "", "", false},
		{"/devices/truck-1/gps", "", "", false},
		{"Devices/truck-1/gps", "", "", false},
		{"device/truck-1/gps", "", "", false},
		{"devices/+/gps", "", "", false},
		{"devices/truck-1/#", "", "", false},
		{"devices/truck-1/gps/+", "", "", false},
		{"devices/truck-1/gps/\x00", "", "", false},
		{"devices/.x/gps", "", "", false},
		{"devices/truck-1/g ps", "", "", false},
		{"devices/truck-1/a:b", "", "", false}, // ':' is not legal in a Kafka topic
		{"devices/truck-1/" + strings.Repeat("s", MaxStreamLen+1), "", "", false},
		{"devices/" + strings.Repeat("d", MaxIDLen+1) + "/gps", "", "", false},
	}
	for _, tt := range tests {
		d, s, ok := ParseTopic(tt.topic)
		if d != tt.device || s != tt.stream || ok != tt.ok {
			t.Errorf("ParseTopic(%q) = %q, %q, %v; want %q, %q, %v", tt.topic, d, s, ok, tt.device, tt.stream, tt.ok)
		}
	}
}

func TestParsePath(t *testing.T) {
	for _, p := range []string{"/devices/m-1/power", "devices/m-1/power"} {
		if d, s, ok := ParsePath(p); !ok || d != "m-1" || s != "power" {
			t.Errorf("ParsePath(%q) = %q, %q, %v", p, d, s, ok)
		}
	}
	if _, _, ok := ParsePath("//devices/m-1/power"); ok {
		t.Error(`ParsePath("//devices/...") accepted`)
	}
}

func TestCommandsTopic(t *testing.T) {
	if got := CommandsTopic("truck-1"); got != "devices/truck-1/commands" {
		t.Errorf("CommandsTopic = %q", got)
	}
}

func FuzzParseTopic(f *testing.F) {
	for _, s := range []string{"devices/truck-1/gps", "devices/a/b/c/d", "devices//", "devices/+/#", "devices/a/\x00", "devices/\xff/x", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, topic string) {
		d, s, ok := ParseTopic(topic)
		if !ok {
			if d != "" || s != "" {
				t.Fatalf("not ok but returned %q, %q", d, s)
			}
			return
		}
		if ValidID(d) != nil || !ValidStream(s) {
			t.Fatalf("ParseTopic(%q) returned invalid device %q or stream %q", topic, d, s)
		}
		prefix := "devices/" + d + "/" + s
		if topic != prefix && !strings.HasPrefix(topic, prefix+"/") {
			t.Fatalf("ParseTopic(%q) = %q, %q: not the leading levels", topic, d, s)
		}
		if strings.ContainsAny(topic, "+#\x00") {
			t.Fatalf("ParseTopic accepted wildcard or NUL in %q", topic)
		}
	})
}

func BenchmarkParseTopic(b *testing.B) {
	for b.Loop() {
		if _, _, ok := ParseTopic("devices/truck-0001/position"); !ok {
			b.Fatal("not ok")
		}
	}
}
