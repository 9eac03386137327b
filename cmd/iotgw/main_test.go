package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runCLI(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := dispatch(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestCheckConfig(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	os.WriteFile(good, []byte("kafka: {brokers: ['k:9092']}\nbuffer: {dir: /tmp/x}\n"), 0o600)
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("kafka:\n  brokers: ['k:9092']\n  acks: all\nbuffer: {dir: /tmp/x, max_bytes: huge}\n"), 0o600)

	if code, out, errs := runCLI("check-config", good); code != 0 || !strings.Contains(out, "ok") {
		t.Errorf("good config: code %d, out %q, err %q", code, out, errs)
	}
	code, _, errs := runCLI("check-config", bad)
	if code != 1 || !strings.Contains(errs, "kafka.acks: unknown key (line 3)") {
		t.Errorf("bad config: code %d, stderr %q", code, errs)
	}
	if code, _, errs := runCLI("check-config", filepath.Join(dir, "missing.yaml")); code != 1 || !strings.Contains(errs, "no such file") {
		t.Errorf("missing file: code %d, stderr %q", code, errs)
	}
	if code, _, _ := runCLI("check-config"); code != 2 {
		t.Errorf("no argument: code %d, want 2", code)
	}
}

func TestDispatch(t *testing.T) {
	if code, out, _ := runCLI("version"); code != 0 || !strings.HasPrefix(out, "iotgw ") {
		t.Errorf("version: %d %q", code, out)
	}
	if code, _, errs := runCLI("frobnicate"); code != 2 || !strings.Contains(errs, "unknown command") {
		t.Errorf("unknown command: %d %q", code, errs)
	}
	if code, _, _ := runCLI("run", "--no-such-flag"); code != 2 {
		t.Errorf("bad flag: %d", code)
	}
	if code, _, errs := runCLI("run"); code != 1 || !strings.Contains(errs, "kafka.brokers") {
		t.Errorf("run without config: %d %q", code, errs)
	}
}
