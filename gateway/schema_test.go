package gateway

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSchemaValidation(t *testing.T) {
	set, err := compileSchemas(map[string]string{"position": "testdata/position.schema.json"})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		stream, payload string
		want            string // substring of the error; "" = valid
	}{
		{"position", `{"device":"t1","seq":1,"lat":53.5,"lon":10.0,"speed":80}`, ""},
		{"engine", `not json, but no schema for this stream`, ""},
		{"position", `{"device":"t1","seq":1,"lat":153.5,"lon":10.0}`, "at '/lat'"},
		{"position", `{"device":"t1","seq":1,"lat":53.5}`, "lon"},
		{"position", `{"device":"t1","seq":1,"lat":53.5,"lon":1,"speed":-4}`, "at '/speed'"},
		{"position", `{"device":"t1","seq":1.5,"lat":53.5,"lon":1}`, "at '/seq'"},
		{"position", `{"device":"t1",`, "not JSON"},
		{"position", `{"device":"t1","seq":1,"lat":53.5,"lon":1} {}`, "not JSON"},
		{"position", ``, "not JSON"},
	}
	for _, c := range cases {
		err := set.validate(&Record{Stream: c.stream, Payload: []byte(c.payload)})
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: unexpected error %v", c.payload, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: error %v, want one with %q", c.payload, err, c.want)
		case err != nil:
			if !errors.Is(err, ErrSchema) || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), "egress.schemas.position") {
				t.Errorf("%s: error %q should wrap ErrSchema, name the key and fit on one line", c.payload, err)
			}
		}
	}
}

func TestSchemaConfigErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(bad, []byte(`{"type": 12}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for files, want := range map[*map[string]string]string{
		{"position": filepath.Join(dir, "missing.json")}: "egress.schemas.position",
		{"engine": bad}:  "egress.schemas.engine",
		{"a/b": bad}:     "egress.schemas",
		{"position": ""}: "egress.schemas.position",
	} {
		o := EgressOptions{Schemas: *files}
		o.SetDefaults()
		err := o.Validate()
		if err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("%v: error %v, want one starting with %s", *files, err, want)
		}
	}
}

func FuzzSchemaValidate(f *testing.F) {
	set, err := compileSchemas(map[string]string{"position": "testdata/position.schema.json"})
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte(`{"device":"t1","seq":1,"lat":53.5,"lon":10.0}`))
	f.Add([]byte(`{"lat":1e999}`))
	f.Add([]byte(`[[[[[[[[[[]]]]]]]]]]`))
	f.Add([]byte("\xff\xfe"))
	f.Fuzz(func(t *testing.T, payload []byte) {
		err := set.validate(&Record{Stream: "position", Payload: payload})
		if err != nil && (!errors.Is(err, ErrSchema) || strings.Contains(err.Error(), "\n")) {
			t.Fatalf("bad error %q", err)
		}
	})
}
