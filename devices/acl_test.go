package devices

import (
	"strings"
	"testing"
)

func defaultACL(t testing.TB) *ACL {
	a, err := NewACL(DefaultPublishACL, DefaultSubscribeACL)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestACLPublish(t *testing.T) {
	a := defaultACL(t)
	tests := []struct {
		device, topic string
		ok            bool
	}{
		{"truck-1", "devices/truck-1/gps", true},
		{"truck-1", "devices/truck-1/gps/raw", true},
		{"truck-1", "devices/truck-1", true}, // '#' matches the parent level
		{"truck-1", "devices/truck-1/commands", true},
		{"truck-1", "devices/truck-2/gps", false},
		{"truck-1", "devices/truck-10/gps", false},
		{"truck-1", "devices/truck-/gps", false},
		{"truck-1", "devices/truck-1x/gps", false},
		{"truck-1", "devices", false},
		{"truck-1", "other/truck-1/gps", false},
		{"truck-1", "devices/+/gps", false},
		{"truck-1", "devices/truck-1/#", false},
		{"truck-1", "devices/truck-1/+", false},
		{"truck-1", "#", false},
		{"truck-1", "", false},
		{"truck-1", "devices/truck-1/\x00", false},
		{"+", "devices/+/gps", false},
		{"#", "devices/#", false},
		{"a/b", "devices/a/b/gps", false},
		{"", "devices//gps", false},
	}
	for _, tt := range tests {
		if got := a.CanPublish(tt.device, tt.topic); got != tt.ok {
			t.Errorf("CanPublish(%q, %q) = %v, want %v", tt.device, tt.topic, got, tt.ok)
		}
	}
}

func TestACLSubscribe(t *testing.T) {
	a := defaultACL(t)
	tests := []struct {
		device, filter string
		ok             bool
	}{
		{"truck-1", "devices/truck-1/commands", true},
		{"truck-1", "devices/truck-1/commands/#", true},
		{"truck-1", "devices/truck-1/commands/+", true},
		{"truck-1", "devices/truck-1/commands/reboot", true},
		{"truck-1", "devices/truck-1/commands/+/x/#", true},
		{"truck-1", "$share/g1/devices/truck-1/commands/#", true},
		{"truck-1", "devices/+/commands", false},
		{"truck-1", "devices/+/commands/#", false},
		{"truck-1", "devices/truck-2/commands", false},
		{"truck-1", "devices/truck-10/commands", false},
		{"truck-1", "devices/truck-1/#", false},
		{"truck-1", "devices/truck-1/+", false},
		{"truck-1", "devices/truck-1/gps", false},
		{"truck-1", "devices/#", false},
		{"truck-1", "+/truck-1/commands", false},
		{"truck-1", "#", false},
		{"truck-1", "+", false},
		{"truck-1", "$SYS/#", false},
		{"truck-1", "$share/g1/#", false},
		{"truck-1", "$share//devices/truck-1/commands", false},
		{"truck-1", "$share/g+/devices/truck-1/commands", false},
		{"truck-1", "$share/g1", false},
		{"truck-1", "devices/truck-1/commands/#/x", false},
		{"truck-1", "devices/truck-1/commands/a#", false},
		{"truck-1", "devices/truck-1/commands/a+", false},
		{"truck-1", "devices/truck-1/commands\x00", false},
		{"truck-1", "", false},
		{"+", "devices/+/commands", false},
		{"#", "devices/#", false},
	}
	for _, tt := range tests {
		if got := a.CanSubscribe(tt.device, tt.filter); got != tt.ok {
			t.Errorf("CanSubscribe(%q, %q) = %v, want %v", tt.device, tt.filter, got, tt.ok)
		}
	}
}

func TestACLCustomPatterns(t *testing.T) {
	tests := []struct {
		name                string
		publish, subscribe  []string
		device, topic       string
		filter              string
		wantPub, wantSubscr bool
	}{
		{"union covers # with parent", nil, []string{"a/{device}", "a/{device}/+/#"}, "d", "", "a/d/#", false, true},
		{"union missing parent", nil, []string{"a/{device}/+/#"}, "d", "", "a/d/#", false, false},
		{"plus pattern covers literal", nil, []string{"x/+/y"}, "d", "", "x/q/y", false, true},
		{"literals do not cover plus", nil, []string{"x/a", "x/b"}, "d", "", "x/+", false, false},
		{"hash pattern covers all below", nil, []string{"fleet/{device}/#"}, "d", "", "fleet/d/+/+", false, true},
		{"placeholder inside a level", []string{"t/dev-{device}/#"}, []string{"t/dev-{device}"}, "d1", "t/dev-d1/x", "t/dev-d1", true, true},
		{"placeholder inside a level, other device", []string{"t/dev-{device}/#"}, nil, "d1", "t/dev-d2/x", "", false, false},
		{"root hash skips $ topics", []string{"#"}, []string{"#"}, "d", "$SYS/x", "$SYS/#", false, false},
		{"root hash covers # ", nil, []string{"#"}, "d", "", "#", false, true},
		{"root plus", []string{"+/x"}, []string{"+/+"}, "d", "a/x", "+/x", true, true},
		{"explicit $ pattern", []string{"$iot/{device}"}, []string{"$iot/{device}/#"}, "d", "$iot/d", "$iot/d/#", true, true},
		{"empty levels", []string{"a//{device}"}, []string{"a//{device}"}, "d", "a//d", "a/+/d", true, false},
		{"no patterns", []string{}, []string{}, "d", "devices/d/x", "devices/d/commands", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := NewACL(tt.publish, tt.subscribe)
			if err != nil {
				t.Fatal(err)
			}
			if tt.topic != "" {
				if got := a.CanPublish(tt.device, tt.topic); got != tt.wantPub {
					t.Errorf("CanPublish(%q, %q) = %v, want %v", tt.device, tt.topic, got, tt.wantPub)
				}
			}
			if tt.filter != "" {
				if got := a.CanSubscribe(tt.device, tt.filter); got != tt.wantSubscr {
					t.Errorf("CanSubscribe(%q, %q) = %v, want %v", tt.device, tt.filter, got, tt.wantSubscr)
				}
			}
		})
	}
}

func TestNewACLErrors(t *testing.T) {
	tests := []struct {
		publish, subscribe []string
		want               string
	}{
		{[]string{""}, nil, `publish[0] "": empty`},
		{[]string{"devices/#/x"}, nil, `publish[0] "devices/#/x": '#' must be the whole last level`},
		{[]string{"ok/#", "devices/a#"}, nil, `publish[1]`},
		{nil, []string{"devices/a+/x"}, `subscribe[0] "devices/a+/x": '+' must be a whole level`},
		{nil, []string{"devices/{device_id}/x"}, `unknown placeholder`},
		{nil, []string{"devices/{id}"}, `unknown placeholder`},
		{[]string{"a\x00"}, nil, "NUL"},
	}
	for _, tt := range tests {
		_, err := NewACL(tt.publish, tt.subscribe)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("NewACL(%q, %q) = %v, want error containing %q", tt.publish, tt.subscribe, err, tt.want)
		}
	}
}

// instances returns topics that filter f matches, replacing each wildcard
// with values that exercise literals, empty levels and '$' (which no
// leading wildcard matches).
func instances(f string) []string {
	levels := strings.Split(f, "/")
	out := []string{""}
	for i, l := range levels {
		var next []string
		for _, prefix := range out {
			join := func(s string) string {
				if i == 0 {
					return s
				}
				return prefix + "/" + s
			}
			switch l {
			case "+":
				for _, v := range []string{"zz", "", "d", "commands", "a"} {
					next = append(next, join(v))
				}
			case "#":
				if i > 0 {
					next = append(next, prefix)
				}
				for _, v := range []string{"zz", "zz/zz", "commands/x", "", "d/commands"} {
					next = append(next, join(v))
				}
			default:
				next = append(next, join(l))
			}
		}
		out = next
	}
	return out
}

// FuzzACLSubscribe checks CanSubscribe against brute force: when a filter
// is allowed, every sampled topic it matches must match a pattern.
func FuzzACLSubscribe(f *testing.F) {
	for _, s := range []string{"devices/d/commands/#", "devices/+/commands", "#", "+/+/+", "a/#", "devices/d/commands/+/#", "$share/g/devices/d/commands", "devices/d/+"} {
		f.Add(s, "a/{device}", "a/{device}/+/#")
	}
	f.Add("devices/d/commands", "devices/{device}/commands", "devices/{device}/commands/#")
	f.Add("x/+", "x/a", "x/+/#")
	f.Fuzz(func(t *testing.T, filter, p1, p2 string) {
		if len(filter) > 64 || strings.Count(filter, "/") > 6 {
			return // keep the brute-force sample small
		}
		a, err := NewACL(nil, []string{p1, p2})
		if err != nil {
			return
		}
		if !a.CanSubscribe("d", filter) {
			return
		}
		inner := filter
		if rest, ok := strings.CutPrefix(filter, "$share/"); ok {
			_, inner, _ = strings.Cut(rest, "/")
		}
		for _, topic := range instances(inner) {
			if strings.HasPrefix(topic, "$") && (inner[0] == '+' || inner[0] == '#') {
				continue // a leading wildcard never matches a '$' topic
			}
			levels := strings.Split(topic, "/")
			if !a.subscribe[0].matches(levels, "d") && !a.subscribe[1].matches(levels, "d") {
				t.Fatalf("CanSubscribe(d, %q) with %q, %q allowed topic %q that no pattern matches", filter, p1, p2, topic)
			}
		}
	})
}

func BenchmarkCanSubscribe(b *testing.B) {
	a := defaultACL(b)
	for b.Loop() {
		a.CanSubscribe("truck-1", "devices/truck-1/commands/#")
	}
}

func BenchmarkCanPublish(b *testing.B) {
	a := defaultACL(b)
	for b.Loop() {
		a.CanPublish("truck-1", "devices/truck-1/gps")
	}
}
