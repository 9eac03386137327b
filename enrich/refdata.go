package enrich

import (
	"bytes"
	_ "embed"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// defaultData is the built-in reference data used by backend "file" with no
// file: the example fleet, identical to examples/refdata/fleet.yaml.
//
//go:embed default_fleet.yaml
var defaultData []byte

// devicesTable is the name of the device table in a YAML file.
const devicesTable = "devices"

// maxRefFileSize bounds what a reference data file may hold, so a wrong
// path (a disk image, a log) fails cleanly instead of exhausting memory.
const maxRefFileSize = 256 << 20

// hash is one device or lookup row: field name to value, as in a Redis hash.
type hash = map[string]string

// refData is a parsed reference data file.
type refData struct {
	devices map[string]hash
	tables  map[string]map[string]hash // table name -> id -> fields
}

// readRefFile reads a YAML or CSV reference data file. For CSV, path holds
// the devices (id column "device") and each lookup's table is read from
// TABLE.csv in the same directory, when that file exists, with the first
// column as the id.
func readRefFile(path string, lookups []Lookup) (*refData, error) {
	format, err := fileFormat(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRefData, err)
	}
	b, err := readLimited(path)
	if err != nil {
		return nil, err
	}
	if format == "yaml" {
		return parseYAML(b, path)
	}
	devs, err := parseCSV(b, path, "device")
	if err != nil {
		return nil, err
	}
	d := &refData{devices: devs, tables: map[string]map[string]hash{}}
	dir := filepath.Dir(path)
	for _, l := range lookups {
		if _, done := d.tables[l.Table]; done {
			continue
		}
		tpath := filepath.Join(dir, l.Table+".csv")
		if filepath.Clean(tpath) == filepath.Clean(path) {
			continue
		}
		tb, err := readLimited(tpath)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		rows, err := parseCSV(tb, tpath, "")
		if err != nil {
			return nil, err
		}
		d.tables[l.Table] = rows
	}
	return d, nil
}

func readLimited(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read reference data: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxRefFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("read reference data %s: %w", path, err)
	}
	if len(b) > maxRefFileSize {
		return nil, fmt.Errorf("%w: %s: larger than %d MiB", ErrRefData, path, maxRefFileSize>>20)
	}
	return b, nil
}

// parseYAML decodes the YAML format: a top-level mapping of tables, each a
// mapping of id to a mapping of field to scalar. "devices" is required.
// Scalars keep their text as written (007 stays "007", 1.50 stays "1.50"),
// because Redis hashes hold strings and both backends must agree.
func parseYAML(b []byte, name string) (*refData, error) {
	var doc map[string]map[string]map[string]string
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("%w: %s: %w (want tables of id: {field: value} with scalar values)", ErrRefData, name, err)
	}
	devs, ok := doc[devicesTable]
	if !ok {
		return nil, fmt.Errorf("%w: %s: no top-level %q table", ErrRefData, name, devicesTable)
	}
	d := &refData{devices: devs, tables: map[string]map[string]hash{}}
	if d.devices == nil {
		d.devices = map[string]hash{}
	}
	for table, rows := range doc {
		if table == "" {
			return nil, fmt.Errorf("%w: %s: empty table name", ErrRefData, name)
		}
		for id, fields := range rows {
			if id == "" {
				return nil, fmt.Errorf("%w: %s: table %s: empty id", ErrRefData, name, table)
			}
			if fields == nil {
				rows[id] = hash{}
			}
			if _, ok := fields[""]; ok {
				return nil, fmt.Errorf("%w: %s: %s.%s: empty field name", ErrRefData, name, table, id)
			}
		}
		if table != devicesTable {
			if rows == nil {
				rows = map[string]hash{}
			}
			d.tables[table] = rows
		}
	}
	return d, nil
}

// parseCSV decodes one CSV table: a header row naming the columns, one of
// them idColumn (the first column when idColumn is ""); every other column
// is a field. Empty cells are absent
// fields (CSV cannot tell empty from missing). Lines starting with # are
// comments. A UTF-8 byte order mark, as spreadsheets write, is skipped.
func parseCSV(b []byte, name, idColumn string) (map[string]hash, error) {
	b = bytes.TrimPrefix(b, []byte("\xef\xbb\xbf"))
	r := csv.NewReader(bytes.NewReader(b))
	r.Comment = '#'
	r.TrimLeadingSpace = true
	header, err := r.Read()
	if err == io.EOF {
		return nil, fmt.Errorf("%w: %s: empty file, want a header row with a %q column", ErrRefData, name, idColumn)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrRefData, name, err)
	}
	idCol := -1
	seen := map[string]bool{}
	for i, h := range header {
		h = strings.TrimSpace(h)
		header[i] = h
		switch {
		case h == "":
			return nil, fmt.Errorf("%w: %s: header column %d is empty", ErrRefData, name, i+1)
		case seen[h]:
			return nil, fmt.Errorf("%w: %s: header column %q appears twice", ErrRefData, name, h)
		}
		seen[h] = true
		if h == idColumn || (idColumn == "" && i == 0) {
			idCol = i
		}
	}
	if idColumn == "" {
		idColumn = header[0]
	}
	if idCol < 0 {
		return nil, fmt.Errorf("%w: %s: header has no %q column", ErrRefData, name, idColumn)
	}
	rows := map[string]hash{}
	for {
		rec, err := r.Read()
		if err == io.EOF {
			return rows, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrRefData, name, err)
		}
		line, _ := r.FieldPos(0)
		id := strings.TrimSpace(rec[idCol])
		if id == "" {
			return nil, fmt.Errorf("%w: %s:%d: empty %s", ErrRefData, name, line, idColumn)
		}
		if _, dup := rows[id]; dup {
			return nil, fmt.Errorf("%w: %s:%d: %s %q appears twice", ErrRefData, name, line, idColumn, id)
		}
		h := make(hash, len(rec)-1)
		for i, v := range rec {
			if i != idCol && v != "" {
				h[header[i]] = v
			}
		}
		rows[id] = h
	}
}

// unusedTables names file tables no lookup reads and lookup tables the file
// lacks, for a warning: both are usually a typo.
func (d *refData) unusedTables(lookups []Lookup) (unused, missing []string) {
	want := map[string]bool{}
	for _, l := range lookups {
		want[l.Table] = true
		if _, ok := d.tables[l.Table]; !ok {
			missing = append(missing, l.Table)
		}
	}
	for t := range d.tables {
		if !want[t] {
			unused = append(unused, t)
		}
	}
	sort.Strings(unused)
	sort.Strings(missing)
	return unused, slices.Compact(missing)
}

// rowCount is the number of rows in all second-level tables.
func (d *refData) rowCount() int {
	n := 0
	for _, rows := range d.tables {
		n += len(rows)
	}
	return n
}
