package devices

import (
	"context"
	"os"
	"testing"
	"time"
)

func TestGenExample(t *testing.T) {
	hashParams = tunedParams
	defer func() { hashParams = fastParams }()
	ctx := context.Background()
	path := "/tmp/iotgw-example/devices.yaml"
	os.RemoveAll("/tmp/iotgw-example")
	reg, err := Open(ctx, Options{File: path}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := time.Date(2025, 1, 15, 9, 30, 0, 0, time.UTC)
	psk, _ := ParsePSK("7d3f1c9a5e2b48d0a1c6e9f203b47d58")
	legacy := mustBcrypt(t, "legacy-0003")
	entries := []Entry{
		{Device{ID: "truck-0001", Created: c, Meta: map[string]string{"fleet": "north", "model": "actros"}}, Credentials{Password: "example-truck-0001"}},
		{Device{ID: "truck-0002", Created: c, Meta: map[string]string{"fleet": "north", "model": "actros"}}, Credentials{Password: "example-truck-0002"}},
		{Device{ID: "truck-0003", Created: c, Disabled: true, Meta: map[string]string{"fleet": "south", "note": "stolen 2025-03-02"}}, Credentials{PasswordHash: legacy}},
		{Device{ID: "meter-a1:b2:c3", Created: c, Meta: map[string]string{"site": "depot-7"}}, Credentials{Password: "example-meter", PSK: psk}},
	}
	if _, err := reg.Put(ctx, entries, false); err != nil {
		t.Fatal(err)
	}
	reg.Close()
}
