package devices

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
)

const fleetCSV = `# fleet north, exported from the ERP
device,password,psk,fleet,model
truck-0001,pw-1,00112233445566778899aabbccddeeff,north,x1
truck-0002,pw-2,,north,
bad id,pw-3,,north,x1
truck-0004,,,north,x1
truck-0005,pw-5,zz,north,x1
truck-0001,pw-dup,,north,x1
truck-0007,pw-7,,north,x1,extra
coap-0008,,00112233445566778899aabbccddeeff,south,c2
`

func TestImport(t *testing.T) {
	ctx := context.Background()
	reg := openFileRegistry(t, ModeRegistry, filepath.Join(t.TempDir(), "devices.yaml"))
	var progress bytes.Buffer
	sum, err := Import(ctx, reg, strings.NewReader(fleetCSV), ImportOptions{Progress: &progress, BatchSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	want := ImportSummary{Rows: 8, Added: 3, Invalid: 5}
	if sum.Rows != want.Rows || sum.Added != want.Added || sum.Invalid != want.Invalid || sum.Skipped != 0 {
		t.Errorf("summary = %v, want %v", sum, want)
	}
	wantProblems := []string{
		`line 5: device "bad id": invalid device id`,
		`line 6: device "truck-0004": empty password`,
		`line 7: device "truck-0005": psk: not hex`,
		`line 8: device "truck-0001": already given on line 3`,
		`line 9: device "truck-0007": 6 cells, the header has 5`,
	}
	if len(sum.Problems) != len(wantProblems) {
		t.Fatalf("problems = %v", sum.Problems)
	}
	for i, w := range wantProblems {
		if got := sum.Problems[i].String(); !strings.HasPrefix(got, w) {
			t.Errorf("problem %d = %q, want prefix %q", i, got, w)
		}
		if !strings.Contains(progress.String(), w) {
			t.Errorf("progress lacks %q:\n%s", w, progress.String())
		}
	}
	if strings.Contains(progress.String(), "pw-") {
		t.Errorf("progress shows a password:\n%s", progress.String())
	}
	if err := reg.Authenticate(ctx, "truck-0002", "pw-2"); err != nil {
		t.Error(err)
	}
	d, _ := reg.Get(ctx, "truck-0001")
	if !d.HasPSK || d.Meta["fleet"] != "north" || d.Meta["model"] != "x1" {
		t.Errorf("truck-0001 = %+v", d)
	}
	if d, _ := reg.Get(ctx, "truck-0002"); len(d.Meta) != 1 {
		t.Errorf("empty cell became metadata: %+v", d.Meta)
	}
	if _, err := reg.PSK(ctx, "coap-0008"); err != nil {
		t.Errorf("PSK-only row: %v", err)
	}
	if _, err := reg.Get(ctx, "truck-0007"); !errors.Is(err, ErrUnknownDevice) {
		t.Errorf("row with an extra cell was stored: %v", err)
	}

	// Again: existing devices are skipped, or updated with Replace.
	again := "device,password,fleet\ntruck-0001,new-pw,south\nnew-1,pw,south\n"
	sum, err = Import(ctx, reg, strings.NewReader(again), ImportOptions{})
	if err != nil || sum.Skipped != 1 || sum.Added != 1 {
		t.Fatalf("second import = %v, %v", sum, err)
	}
	if err := reg.Authenticate(ctx, "truck-0001", "pw-1"); err != nil {
		t.Errorf("skipped device changed: %v", err)
	}
	sum, err = Import(ctx, reg, strings.NewReader(again), ImportOptions{Replace: true})
	if err != nil || sum.Updated != 2 {
		t.Fatalf("replace import = %v, %v", sum, err)
	}
	if err := reg.Authenticate(ctx, "truck-0001", "new-pw"); err != nil {
		t.Errorf("updated password: %v", err)
	}
	if d, _ := reg.Get(ctx, "truck-0001"); !d.HasPSK || d.Meta["fleet"] != "south" {
		t.Errorf("updated device = %+v (psk must be kept when the CSV has none)", d)
	}
}

func TestImportHashesAndFlags(t *testing.T) {
	ctx := context.Background()
	reg := openFileRegistry(t, ModeRegistry, filepath.Join(t.TempDir(), "devices.yaml"))
	csv := "\ufeffDevice,Password_Hash,Disabled\nold-1," + mustBcrypt(t, "legacy") + ",no\nold-2," +
		mustBcrypt(t, "legacy2") + ",yes\nold-3,plaintext,no\nold-4," + mustBcrypt(t, "x") + ",maybe\n"
	sum, err := Import(ctx, reg, strings.NewReader(csv), ImportOptions{})
	if err != nil || sum.Added != 2 || sum.Invalid != 2 {
		t.Fatalf("import = %v, %v; problems %v", sum, err, sum.Problems)
	}
	if err := reg.Authenticate(ctx, "old-1", "legacy"); err != nil {
		t.Error(err)
	}
	if err := reg.Authenticate(ctx, "old-2", "legacy2"); !errors.Is(err, ErrDisabled) {
		t.Errorf("disabled import: %v", err)
	}
}

func TestImportHeaderErrors(t *testing.T) {
	tests := []struct{ csv, want string }{
		{"", "empty file"},
		{"# only a comment\n", "empty file"},
		{"id,password\nx,y\n", `no "device" column`},
		{"device,fleet\nx,y\n", `no "password"`},
		{"device,password,password\n", `column "password" twice`},
		{"device,password,bad column\n", "not a valid metadata name"},
		{"device,\"pass\nword\n", "header"},
	}
	for _, tt := range tests {
		_, err := Import(context.Background(), &memRegistry{}, strings.NewReader(tt.csv), ImportOptions{})
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Import(%q) = %v, want error containing %q", tt.csv, err, tt.want)
		}
	}
}

func TestImportStoreError(t *testing.T) {
	reg := &memRegistry{fail: errors.New("disk full")}
	csv := "device,password\na,1\nb,2\nc,3\n"
	sum, err := Import(context.Background(), reg, strings.NewReader(csv), ImportOptions{BatchSize: 2})
	if err == nil || !strings.Contains(err.Error(), "lines 2-3") || !strings.Contains(err.Error(), "disk full") {
		t.Errorf("Import = %v, %v; want an error naming the lines and the cause", sum, err)
	}
}

// memRegistry is a Registry that only records Put, for importer tests.
type memRegistry struct {
	Registry
	devs map[string]Entry
	fail error
}

func (m *memRegistry) Put(_ context.Context, entries []Entry, replace bool) ([]Outcome, error) {
	if m.fail != nil {
		return nil, m.fail
	}
	if m.devs == nil {
		m.devs = map[string]Entry{}
	}
	out := make([]Outcome, len(entries))
	for i, e := range entries {
		if err := e.validate(); err != nil {
			return nil, fmt.Errorf("importer passed an invalid entry: %w", err)
		}
		_, exists := m.devs[e.Device.ID]
		switch {
		case exists && !replace:
			out[i] = Skipped
			continue
		case exists:
			out[i] = Updated
		default:
			out[i] = Added
		}
		m.devs[e.Device.ID] = e
	}
	return out, nil
}

func FuzzImport(f *testing.F) {
	f.Add([]byte(fleetCSV))
	f.Add([]byte("device,password_hash\nx,$2a$04$GrHSb0wNYExNFPlWGNC0e.TDhYOJJHYvSX5DlxP9CmNkhkg9IVFGa\n"))
	f.Add([]byte("device,password\n\"unterminated,x\nok,pw\n"))
	f.Add([]byte("device,psk,disabled\nd,00112233445566778899aabbccddeeff,true\n"))
	f.Add([]byte("\ufeffdevice;password\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		reg := &memRegistry{}
		sum, err := Import(context.Background(), reg, bytes.NewReader(data), ImportOptions{BatchSize: 3})
		if err != nil {
			if strings.Contains(err.Error(), "invalid entry") {
				t.Fatal(err)
			}
			return
		}
		if sum.Added+sum.Updated+sum.Skipped+sum.Invalid != sum.Rows || sum.Added != len(reg.devs) {
			t.Fatalf("summary %v does not add up (%d stored)", sum, len(reg.devs))
		}
		for _, p := range sum.Problems {
			if p.Line < 1 || p.Err == nil {
				t.Fatalf("problem without line or error: %+v", p)
			}
		}
	})
}
