package enrich

import (
	"bytes"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var exampleLookups = DevOptions().Lookups

func TestParseYAML(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		devices map[string]hash
		tables  map[string]map[string]hash
		err     string
	}{
		{
			name:    "two levels",
			in:      "devices:\n  t1: {fleet: north, route: r1}\nroutes:\n  r1: {name: Coast, km: 118}\n",
			devices: map[string]hash{"t1": {"fleet": "north", "route": "r1"}},
			tables:  map[string]map[string]hash{"routes": {"r1": {"name": "Coast", "km": "118"}}},
		},
		{
			name:    "scalars keep their text",
			in:      "devices:\n  007: {a: 1.50, b: yes, c: 0x1F, d: ~, e: '', f: 2024-01-02}\n",
			devices: map[string]hash{"007": {"a": "1.50", "b": "yes", "c": "0x1F", "d": "", "e": "", "f": "2024-01-02"}},
			tables:  map[string]map[string]hash{},
		},
		{
			name:    "anchors and merge keys",
			in:      "devices:\n  t0: &b {fleet: north}\n  t1: {<<: *b, model: X}\n  t2: null\n",
			devices: map[string]hash{"t0": {"fleet": "north"}, "t1": {"fleet": "north", "model": "X"}, "t2": {}},
			tables:  map[string]map[string]hash{},
		},
		{name: "no devices", in: "routes: {}\n", err: `no top-level "devices" table`},
		{name: "empty", in: "", err: `no top-level "devices" table`},
		{name: "nested value", in: "devices:\n  t1: {a: {b: c}}\n", err: "line 2"},
		{name: "list value", in: "devices:\n  t1: {a: [1, 2]}\n", err: "cannot unmarshal"},
		{name: "duplicate device", in: "devices:\n  t1: {a: b}\n  t1: {a: c}\n", err: "already defined"},
		{name: "not a mapping", in: "- a\n- b\n", err: "cannot unmarshal"},
		{name: "empty id", in: "devices:\n  '': {a: b}\n", err: "empty id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := parseYAML([]byte(tt.in), "test.yaml")
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) || !errors.Is(err, ErrRefData) {
					t.Fatalf("err = %v, want ErrRefData containing %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			assertRefData(t, d, tt.devices, tt.tables)
		})
	}
}

func TestParseCSV(t *testing.T) {
	tests := []struct {
		name string
		in   string
		rows map[string]hash
		err  string
	}{
		{
			name: "fields and empty cells",
			in:   "# comment\ndevice,fleet,route\nt1,north,r1\n t2 ,south,\n",
			rows: map[string]hash{"t1": {"fleet": "north", "route": "r1"}, "t2": {"fleet": "south"}},
		},
		{
			name: "id column anywhere, quoted commas, BOM",
			in:   "\xef\xbb\xbfname,device\n\"Smith, Anna\",t1\n",
			rows: map[string]hash{"t1": {"name": "Smith, Anna"}},
		},
		{name: "header only", in: "device,a\n", rows: map[string]hash{}},
		{name: "empty", in: "", err: "empty file"},
		{name: "no id column", in: "id,a\n1,2\n", err: `no "device" column`},
		{name: "duplicate column", in: "device,a,a\n", err: "appears twice"},
		{name: "empty header", in: "device,,a\n", err: "column 2 is empty"},
		{name: "duplicate id", in: "device,a\nt1,1\nt1,2\n", err: "test.csv:3: device \"t1\" appears twice"},
		{name: "empty id", in: "device,a\n,1\n", err: "test.csv:2: empty device"},
		{name: "ragged row", in: "device,a\nt1,1,2\n", err: "wrong number of fields"},
		{name: "bad quote", in: "device,a\nt1,\"x\n", err: "extraneous or missing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rows, err := parseCSV([]byte(tt.in), "test.csv", "device")
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) || !errors.Is(err, ErrRefData) {
					t.Fatalf("err = %v, want ErrRefData containing %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !maps.EqualFunc(rows, tt.rows, maps.Equal) {
				t.Fatalf("rows = %v, want %v", rows, tt.rows)
			}
		})
	}
}

// TestExamples checks that examples/refdata holds the same data in both
// formats and that the built-in default is the YAML example.
func TestExamples(t *testing.T) {
	dir := filepath.Join("..", "examples", "refdata")
	y, err := readRefFile(filepath.Join(dir, "fleet.yaml"), exampleLookups)
	if err != nil {
		t.Fatal(err)
	}
	c, err := readRefFile(filepath.Join(dir, "fleet.csv"), exampleLookups)
	if err != nil {
		t.Fatal(err)
	}
	// CSV has no empty values: drop them from the YAML side to compare.
	assertRefData(t, c, y.devices, y.tables)
	if len(y.devices) < 5 || len(y.tables) != 4 {
		t.Errorf("example has %d devices and %d tables", len(y.devices), len(y.tables))
	}
	if unused, missing := y.unusedTables(exampleLookups); len(unused)+len(missing) > 0 {
		t.Errorf("DevOptions lookups do not match the example: unused %v, missing %v", unused, missing)
	}
	b, err := os.ReadFile(filepath.Join(dir, "fleet.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, defaultData) {
		t.Errorf("enrich/default_fleet.yaml differs from examples/refdata/fleet.yaml; copy it over")
	}
}

func TestReadRefFileErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	lookups := []Lookup{{Field: "route", Table: "routes"}}
	if _, err := readRefFile(filepath.Join(dir, "missing.yaml"), lookups); err == nil {
		t.Error("missing file: no error")
	}
	if _, err := readRefFile(write("x.json", "{}"), lookups); !errors.Is(err, ErrRefData) {
		t.Errorf("json: err = %v, want ErrRefData", err)
	}
	devs := write("devs.csv", "device,route\nt1,r1\n")
	d, err := readRefFile(devs, lookups)
	if err != nil || len(d.tables) != 0 {
		t.Fatalf("CSV without table files: %v, %v", d, err)
	}
	write("routes.csv", "route,name\nr1,Coast\n")
	d, err = readRefFile(devs, lookups)
	if err != nil || d.tables["routes"]["r1"]["name"] != "Coast" {
		t.Fatalf("CSV with routes.csv: %+v, %v", d, err)
	}
	write("routes.csv", "id,name\nr1,Coast\n") // the first column is the id, whatever its name
	if d, err = readRefFile(devs, lookups); err != nil || d.tables["routes"]["r1"]["name"] != "Coast" {
		t.Fatalf("CSV table with id column: %+v, %v", d, err)
	}
	write("routes.csv", "route,name\nr1,Coast\nr1,Hill\n")
	if _, err := readRefFile(devs, lookups); err == nil || !strings.Contains(err.Error(), `routes.csv:3: route "r1" appears twice`) {
		t.Errorf("bad table file: err = %v", err)
	}
}

func assertRefData(t *testing.T, d *refData, devices map[string]hash, tables map[string]map[string]hash) {
	t.Helper()
	nonEmpty := func(h hash) hash {
		out := hash{}
		for k, v := range h {
			if v != "" {
				out[k] = v
			}
		}
		return out
	}
	eq := func(a, b hash) bool { return maps.Equal(nonEmpty(a), nonEmpty(b)) }
	if !maps.EqualFunc(d.devices, devices, eq) {
		t.Errorf("devices = %v\nwant %v", d.devices, devices)
	}
	if len(d.tables) != len(tables) {
		t.Errorf("tables = %v, want %v", d.tables, tables)
	}
	for name, rows := range tables {
		if !maps.EqualFunc(d.tables[name], rows, eq) {
			t.Errorf("table %s = %v\nwant %v", name, d.tables[name], rows)
		}
	}
}

func FuzzParseYAML(f *testing.F) {
	f.Add(defaultData)
	f.Add([]byte("devices:\n  t1: {a: b}\nroutes:\n  r1: {x: y}\n"))
	f.Add([]byte("devices:\n  t0: &b {fleet: north}\n  t1: {<<: *b}\n"))
	f.Add([]byte("a: &a [*a, *a]\ndevices: {}\n"))
	f.Add([]byte("devices:\n  t1: {a: {b: c}}\n"))
	f.Add([]byte("devices: !!binary aGVsbG8=\n"))
	f.Add([]byte("\xff\xfe"))
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := parseYAML(b, "fuzz.yaml")
		if err != nil {
			if !errors.Is(err, ErrRefData) {
				t.Fatalf("error %v is not ErrRefData", err)
			}
			return
		}
		checkRefData(t, d)
	})
}

func FuzzParseCSV(f *testing.F) {
	for _, name := range []string{"fleet.csv", "routes.csv"} {
		if b, err := os.ReadFile(filepath.Join("..", "examples", "refdata", name)); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte("device,a\nt1,\"x\n"))
	f.Add([]byte("\xef\xbb\xbfdevice\n\n\n"))
	f.Add([]byte("device,a\n\"t1\"\"\",\"a\nb\"\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, idColumn := range []string{"device", ""} {
			rows, err := parseCSV(b, "fuzz.csv", idColumn)
			if err != nil {
				if !errors.Is(err, ErrRefData) {
					t.Fatalf("error %v is not ErrRefData", err)
				}
				continue
			}
			checkRefData(t, &refData{devices: rows})
		}
	})
}

// checkRefData asserts what every successfully parsed file guarantees.
func checkRefData(t *testing.T, d *refData) {
	t.Helper()
	if d.devices == nil {
		t.Fatal("nil devices")
	}
	for _, rows := range append([]map[string]hash{d.devices}, tablesOf(d)...) {
		for id, fields := range rows {
			if id == "" || fields == nil {
				t.Fatalf("row %q has nil fields or empty id", id)
			}
			if _, ok := fields[""]; ok {
				t.Fatalf("row %q has an empty field name", id)
			}
		}
	}
}

func tablesOf(d *refData) []map[string]hash {
	var out []map[string]hash
	for _, rows := range d.tables {
		out = append(out, rows)
	}
	return out
}
