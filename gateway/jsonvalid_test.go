package gateway

import (
	"encoding/json"
	"strings"
	"testing"
)

var jsonCases = []string{
	``, ` `, `{}`, `[]`, `""`, `0`, `-0`, `01`, `-`, `1.`, `1.5`, `1e5`, `1E+5`, `1e-`, `.5`, `+1`, `1.5e`, `-01`,
	`true`, `false`, `null`, `tru`, `nul`, `True`, `truex`, ` true `, "\ttrue\r\n", `true false`,
	`{"a":1}`, `{"a":1,}`, `{"a" : [1, 2, {"b": null}] }`, `{a:1}`, `{"a"}`, `{"a":}`, `{,}`, `[1,]`, `[,1]`, `[1 2]`,
	`"\u00e9"`, `"\u00g9"`, `"\x"`, `"a\"b"`, `"a\\"`, `"\/"`, "\"tab\tin\"", "\"\x7f\"", "\"\xff\xfe\"", `"unterminated`,
	`{"device":"truck-0001","seq":12,"ts":"2026-01-01T00:00:00Z","lat":53.55,"lon":9.99,"speed_kmh":72.5}`,
	strings.Repeat("[", 10000) + strings.Repeat("]", 10000),
	strings.Repeat("[", 10001) + strings.Repeat("]", 10001),
	strings.Repeat(`{"a":`, 10001) + "1" + strings.Repeat("}", 10001),
}

func TestValidJSONMatchesStdlib(t *testing.T) {
	for _, c := range jsonCases {
		if got, want := validJSON([]byte(c)), json.Valid([]byte(c)); got != want {
			t.Errorf("validJSON(%.40q) = %v, encoding/json says %v", c, got, want)
		}
	}
}

// FuzzValidJSON is a differential fuzz test: encoding/json.Valid is the
// oracle.
func FuzzValidJSON(f *testing.F) {
	for _, c := range jsonCases {
		if len(c) < 1000 { // the nesting-limit cases would slow every run
			f.Add([]byte(c))
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if got, want := validJSON(b), json.Valid(b); got != want {
			t.Fatalf("validJSON(%q) = %v, encoding/json says %v", b, got, want)
		}
	})
}

func BenchmarkValidJSON(b *testing.B) {
	payload := []byte(`{"device":"truck-0001","seq":12345,"ts":"2026-01-01T00:00:00.123456789Z","run":"throughput","lat":53.551086,"lon":9.993682,"speed_kmh":72.5,"heading":181.2,"odometer_km":120345.7,"fuel_pct":63.1,"engine":{"rpm":1450,"coolant_c":88.5,"oil_bar":3.9}}`)
	b.Run("iotgw", func(b *testing.B) {
		b.SetBytes(int64(len(payload)))
		for b.Loop() {
			validJSON(payload)
		}
	})
	b.Run("encoding/json", func(b *testing.B) {
		b.SetBytes(int64(len(payload)))
		for b.Loop() {
			json.Valid(payload)
		}
	})
}
