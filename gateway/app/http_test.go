package app

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"github.com/iotgw/iotgw/buffer"
	"github.com/iotgw/iotgw/enrich"
	"github.com/iotgw/iotgw/gateway"
	"github.com/iotgw/iotgw/protocols/mqtt"
)

// Every field the status page reads exists in /status under that name: the
// page skips missing keys silently, so a renamed field would only show as
// an empty table.
func TestStatusPageKeys(t *testing.T) {
	fields := func(v any) map[string]bool {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]any{}
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		keys := map[string]bool{}
		for k := range m {
			keys[k] = true
		}
		return keys
	}
	sections := map[string]map[string]bool{
		"m": fields(mqtt.Stats{}), "e": fields(gateway.EgressStats{}), "b": fields(buffer.Stats{}),
		"s.enrich": fields(enrich.Stats{}), "s": fields(Status{}),
	}
	page := string(statusPage)
	used := 0
	// rows(el, obj, ["k1", "k2"]) and obj.key reads.
	for _, m := range regexp.MustCompile(`rows\([^,]+, ([\w.]+), \[([^\]]*)\]\)`).FindAllStringSubmatch(page, -1) {
		for _, k := range strings.Split(m[2], ",") {
			k = strings.Trim(strings.TrimSpace(k), `"`)
			used++
			if !sections[m[1]][k] {
				t.Errorf("status page reads %s.%s, which /status does not have", m[1], k)
			}
		}
	}
	for _, m := range regexp.MustCompile(`\b(s\.enrich|m|e|b|s)\.([a-z_0-9]+)\b`).FindAllStringSubmatch(page, -1) {
		if m[1] == "s" && (m[2] == "enrich" || m[2] == "mqtt" || m[2] == "egress" || m[2] == "buffer") {
			continue
		}
		used++
		if !sections[m[1]][m[2]] {
			t.Errorf("status page reads %s.%s, which /status does not have", m[1], m[2])
		}
	}
	if used < 20 {
		t.Errorf("found only %d key reads in the status page: the test's patterns are out of date", used)
	}
}
