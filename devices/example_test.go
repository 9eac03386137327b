package devices

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// TestExamples keeps examples/devices valid: the registry loads and its
// documented passwords work, and the CSV imports without problems.
func TestExamples(t *testing.T) {
	withTunedParams(t)
	ctx := context.Background()
	dir := filepath.Join("..", "examples", "devices")
	data, err := os.ReadFile(filepath.Join(dir, "devices.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "devices.yaml")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	reg := openFileRegistry(t, ModeRegistry, path)
	for id, pw := range map[string]string{"truck-0001": "example-truck-0001", "truck-0002": "example-truck-0002", "meter-a1:b2:c3": "example-meter"} {
		if err := reg.Authenticate(ctx, id, pw); err != nil {
			t.Errorf("%s: %v", id, err)
		}
	}
	if _, err := reg.PSK(ctx, "meter-a1:b2:c3"); err != nil {
		t.Error(err)
	}

	hashParams = fastParams
	f, err := os.Open(filepath.Join(dir, "fleet.csv"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sum, err := Import(ctx, reg, f, ImportOptions{})
	if err != nil || sum.Invalid != 0 || sum.Added != 5 {
		t.Errorf("importing fleet.csv: %v, %v; problems %v", sum, err, sum.Problems)
	}
}
