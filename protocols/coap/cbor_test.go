package coap

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// Vectors from RFC 8949 Appendix A, with the JSON that §6.1 gives.
var cborVectors = []struct{ hex, json string }{
	{"00", "0"},
	{"17", "23"},
	{"1818", "24"},
	{"1903e8", "1000"},
	{"1bffffffffffffffff", "18446744073709551615"},
	{"20", "-1"},
	{"3863", "-100"},
	{"3bffffffffffffffff", "-18446744073709551616"},
	{"c249010000000000000000", `"AQAAAAAAAAAA"`},
	{"c349010000000000000000", `"~AQAAAAAAAAAA"`},
	{"f90000", "0"},
	{"f98000", "-0"},
	{"f93c00", "1"},
	{"fb3ff199999999999a", "1.1"},
	{"f93e00", "1.5"},
	{"f97bff", "65504"},
	{"fa47c35000", "100000"},
	{"fa7f7fffff", "3.4028235e+38"},
	{"fb7e37e43c8800759c", "1e+300"},
	{"f90001", "5.9604645e-08"},
	{"f90400", "6.1035156e-05"},
	{"f9c400", "-4"},
	{"f97c00", "null"},
	{"f97e00", "null"},
	{"f9fc00", "null"},
	{"fa7f800000", "null"},
	{"fb7ff8000000000000", "null"},
	{"f4", "false"},
	{"f5", "true"},
	{"f6", "null"},
	{"f7", "null"},
	{"f0", "null"},
	{"f8ff", "null"},
	{"c074323031332d30332d32315432303a30343a30305a", `"2013-03-21T20:04:00Z"`},
	{"c11a514b67b0", "1363896240"},
	{"d74401020304", `"01020304"`},
	{"d6820141ff", `[1,"/w=="]`},
	{"d5820141ff", `[1,"_w"]`},
	{"d818456449455446", `"ZElFVEY"`},
	{"40", `""`},
	{"4401020304", `"AQIDBA"`},
	{"60", `""`},
	{"6161", `"a"`},
	{"6449455446", `"IETF"`},
	{"62225c", `"\"\\"`},
	{"62c3bc", `"ü"`},
	{"63e6b0b4", `"水"`},
	{"6101", `"\u0001"`},
	{"80", "[]"},
	{"83010203", "[1,2,3]"},
	{"8301820203820405", "[1,[2,3],[4,5]]"},
	{"a0", "{}"},
	{"a201020304", `{"1":2,"3":4}`},
	{"a26161016162820203", `{"a":1,"b":[2,3]}`},
	{"826161a161626163", `["a",{"b":"c"}]`},
	{"a3f5012001f93e0002", `{"true":1,"-1":1,"1.5":2}`},
	{"a14201020b", `{"AQI":11}`},
	{"5f42010243030405ff", `"AQIDBAU"`},
	{"7f657374726561646d696e67ff", `"streaming"`},
	{"9fff", "[]"},
	{"9f018202039f0405ffff", "[1,[2,3],[4,5]]"},
	{"bf61610161629f0203ffff", `{"a":1,"b":[2,3]}`},
	{"826161bf61626163ff", `["a",{"b":"c"}]`},
}

func TestCBORToJSON(t *testing.T) {
	for _, v := range cborVectors {
		in, err := hex.DecodeString(v.hex)
		if err != nil {
			t.Fatal(err)
		}
		out, err := cborToJSON(in, false)
		if err != nil {
			t.Errorf("%s: %v", v.hex, err)
			continue
		}
		if string(out) != v.json {
			t.Errorf("%s: got %s, want %s", v.hex, out, v.json)
		}
		if !json.Valid(out) {
			t.Errorf("%s: %s is not valid JSON", v.hex, out)
		}
	}
}

func TestCBORRefused(t *testing.T) {
	cases := map[string]string{
		"empty":                 "",
		"truncated argument":    "18",
		"truncated string":      "6461",
		"reserved info":         "1c",
		"indefinite integer":    "1f",
		"unexpected break":      "ff",
		"break in array":        "81ff",
		"invalid utf-8":         "62c328",
		"trailing bytes":        "0000",
		"huge array":            "9affffffff",
		"huge map":              "baffffffff00",
		"huge string":           "5affffffff",
		"array map key":         "a18001",
		"map map key":           "a1a001",
		"wrong chunk":           "5f6161ff",
		"nested indefinite":     "5f5f4101ffff",
		"bignum not bytes":      "c201",
		"unterminated array":    "9f01",
		"unterminated map":      "bf6161",
		"missing map value":     "a16161",
		"deep nesting":          strings.Repeat("81", 100) + "00",
		"deep tags":             strings.Repeat("c6", 100) + "00",
		"truncated float":       "fa0000",
		"truncated indef chunk": "7f61",
	}
	for name, h := range cases {
		in, err := hex.DecodeString(h)
		if err != nil {
			t.Fatal(err)
		}
		if out, err := cborToJSON(in, false); !errors.Is(err, errCBOR) {
			t.Errorf("%s (%s): got %s, %v; want an error", name, h, out, err)
		}
	}
}

func TestSenMLCBOR(t *testing.T) {
	// RFC 8428 §6: the pack [{-2: "urn:dev:ow:10e2073a01080063", 0:
	// "voltage", 1: "V", 2: 120.1}, {0: "current", 6: -5, 2: 1.2, 8:
	// h'0102'}], integer labels on records only.
	in := []byte{0x82, 0xa4, 0x21, 0x78, 0x1b}
	in = append(in, "urn:dev:ow:10e2073a01080063"...)
	in = append(in, 0x00, 0x67)
	in = append(in, "voltage"...)
	in = append(in, 0x01, 0x61, 'V', 0x02, 0xfb, 0x40, 0x5e, 0x06, 0x66, 0x66, 0x66, 0x66, 0x66)
	in = append(in, 0xa4, 0x00, 0x67)
	in = append(in, "current"...)
	in = append(in, 0x06, 0x24, 0x02, 0xfb, 0x3f, 0xf3, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x08, 0x42, 0x01, 0x02)
	want := `[{"bn":"urn:dev:ow:10e2073a01080063","n":"voltage","u":"V","v":120.1},{"n":"current","t":-5,"v":1.2,"vd":"AQI"}]`
	out, err := cborToJSON(in, true)
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != want {
		t.Fatalf("got  %s\nwant %s", out, want)
	}
	// As plain CBOR the labels stay numbers.
	out, err = cborToJSON(in, false)
	if err != nil || !strings.HasPrefix(string(out), `[{"-2":"urn`) {
		t.Fatalf("plain CBOR: %s %v", out, err)
	}
}

// FuzzCBORToJSON: no panic, and whatever is accepted is valid JSON.
func FuzzCBORToJSON(f *testing.F) {
	for _, v := range cborVectors {
		b, _ := hex.DecodeString(v.hex)
		f.Add(b, false)
	}
	f.Add([]byte{0x81, 0xa1, 0x21, 0x61, 'x'}, true)
	f.Add([]byte{0x9f, 0x9f, 0x9f, 0xff, 0xff, 0xff}, false)
	f.Fuzz(func(t *testing.T, in []byte, senml bool) {
		out, err := cborToJSON(in, senml)
		if err != nil {
			return
		}
		if !json.Valid(out) {
			t.Fatalf("%x converted to invalid JSON %s", in, out)
		}
		if len(out) > 8*len(in)+16 {
			t.Fatalf("%d bytes of CBOR became %d bytes of JSON", len(in), len(out))
		}
	})
}
