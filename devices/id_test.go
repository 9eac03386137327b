package devices

import (
	"errors"
	"strings"
	"testing"
)

func TestValidID(t *testing.T) {
	tests := []struct {
		id string
		ok bool
	}{
		{"truck-1", true},
		{"a", true},
		{"aa:bb:cc:dd:ee:ff", true},
		{"550e8400-e29b-41d4-a716-446655440000", true},
		{"Sensor_42.eu", true},
		{"_x", true},
		{"9", true},
		{strings.Repeat("a", MaxIDLen), true},
		{strings.Repeat("a", MaxIDLen+1), false},
		{"", false},
		{".", false},
		{"..", false},
		{".hidden", false},
		{"-rf", false},
		{"a/b", false},
		{"+", false},
		{"#", false},
		{"a+b", false},
		{"$SYS", false},
		{"a b", false},
		{"a\x00b", false},
		{"a\nb", false},
		{"caf\u00e9", false},
		{"{device}", false},
		{"a*b", false},
		{`a\b`, false},
	}
	for _, tt := range tests {
		err := ValidID(tt.id)
		if (err == nil) != tt.ok {
			t.Errorf("ValidID(%q) = %v, want ok=%v", tt.id, err, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalidID) {
			t.Errorf("ValidID(%q) = %v, does not wrap ErrInvalidID", tt.id, err)
		}
	}
}

func TestValidIDErrorIsShort(t *testing.T) {
	err := ValidID(strings.Repeat("x", 1<<20))
	if err == nil || len(err.Error()) > 200 {
		t.Errorf("error for a 1 MiB id is %d bytes", len(err.Error()))
	}
}

func FuzzValidID(f *testing.F) {
	for _, s := range []string{"truck-1", "aa:bb", "", ".", "-x", "a/b", "#", "+", "$SYS", "a\x00", "\xff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		if ValidID(id) != nil {
			return
		}
		// A valid id is one safe topic level, key and file name.
		if len(id) == 0 || len(id) > MaxIDLen || strings.ContainsAny(id, "/+#$ \x00\\*?{}") ||
			id[0] == '.' || id[0] == '-' {
			t.Fatalf("ValidID accepted %q", id)
		}
		d, s, ok := ParseTopic("devices/" + id + "/s")
		if !ok || d != id || s != "s" {
			t.Fatalf("ParseTopic of a topic with valid id %q = %q, %q, %v", id, d, s, ok)
		}
	})
}
