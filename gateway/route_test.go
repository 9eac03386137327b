package gateway

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestRouterDefault(t *testing.T) {
	r, err := NewRouter(nil)
	if err != nil {
		t.Fatal(err)
	}
	rec := &Record{Device: "truck-7", Topic: "devices/truck-7/position", Protocol: ProtocolMQTT}
	got, err := r.Route(rec)
	if err != nil {
		t.Fatal(err)
	}
	if got.Topic != "iot.position" || got.Key != "truck-7" || got.Format != FormatEnvelope || got.Spec.Partitions != 3 {
		t.Fatalf("got %+v", got)
	}
	for _, topic := range []string{"devices/truck-7", "devices/truck-7/position/extra", "other/x/y", "devices//position"} {
		if _, err := r.Route(&Record{Device: "truck-7", Topic: topic}); !errors.Is(err, ErrNoRoute) {
			t.Errorf("%q: err = %v, want ErrNoRoute", topic, err)
		}
	}
}

func TestRouterRules(t *testing.T) {
	r, err := NewRouter([]Route{
		{Match: "devices/{device}/raw/#", Topic: "iot.raw", Format: FormatRaw, Partitions: 6},
		{Match: "devices/+/{stream}", Topic: "fleet.{stream}.{protocol}", Key: "{device}-{stream}"},
		{Match: "meters/{site}/{meter}", Topic: "meters.{site}", Key: "{meter}"},
	})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		topic, device      string
		wantTopic, wantKey string
		wantFormat         string
		wantPartitions     int
	}{
		{"devices/t1/raw/can/0x1f", "t1", "iot.raw", "t1", FormatRaw, 6},
		{"devices/t1/raw", "t1", "iot.raw", "t1", FormatRaw, 6},
		{"devices/t1/engine", "t1", "fleet.engine.mqtt", "t1-engine", FormatEnvelope, 3},
		{"meters/zurich/m-9", "m-9", "meters.zurich", "m-9", FormatEnvelope, 3},
	}
	for _, c := range cases {
		got, err := r.Route(&Record{Device: c.device, Topic: c.topic, Protocol: ProtocolMQTT})
		if err != nil {
			t.Errorf("%s: %v", c.topic, err)
			continue
		}
		if got.Topic != c.wantTopic || got.Key != c.wantKey || got.Format != c.wantFormat || got.Spec.Partitions != c.wantPartitions {
			t.Errorf("%s: got %+v", c.topic, got)
		}
	}
	// A captured segment that is not a legal topic name is an error, not a bad topic.
	if _, err := r.Route(&Record{Device: "t1", Topic: "devices/t1/bad stream"}); err == nil || !strings.Contains(err.Error(), "only letters") {
		t.Errorf("invalid topic name not reported: %v", err)
	}
}

func TestRouterConfigErrors(t *testing.T) {
	cases := map[string]Route{
		"routes[0].match":               {Match: "devices/#/x", Topic: "t"},
		"routes[0].topic":               {Match: "devices/{device}", Topic: "iot.{nope}"},
		"routes[0].format":              {Match: "a", Topic: "t", Format: "xml"},
		"routes[0].partitions":          {Match: "a", Topic: "t", Partitions: -2},
		"routes[0].replication_factor":  {Match: "a", Topic: "t", ReplicationFactor: -3},
		"routes[0].min_insync_replicas": {Match: "a", Topic: "t", ReplicationFactor: 2, MinInsyncReplicas: 3},
		"routes[0].config":              {Match: "a", Topic: "t", Config: map[string]string{"a b": "1"}},
	}
	for key, rt := range cases {
		_, err := NewRouter([]Route{rt})
		if err == nil || !strings.HasPrefix(err.Error(), key) {
			t.Errorf("%s: err = %v", key, err)
		}
	}
}

func TestRouterStaticTopicsAndSpecs(t *testing.T) {
	r, err := NewRouter([]Route{
		{Match: "devices/{device}/alarm", Topic: "iot.alarms", Partitions: 12, ReplicationFactor: 3, MinInsyncReplicas: 2,
			Config: map[string]string{"retention.ms": "86400000"}},
		{Match: "devices/{device}/{stream}", Topic: "iot.{stream}"},
		{Match: "meters/#", Topic: "iot.alarms"}, // same topic again: listed once
		{Match: "raw/#", Topic: "iot.raw"},
	})
	if err != nil {
		t.Fatal(err)
	}
	got := r.StaticTopics()
	if len(got) != 2 || got[0].Key != "routes[0].topic" || got[0].Spec.Name != "iot.alarms" || got[1].Key != "routes[3].topic" || got[1].Spec.Name != "iot.raw" {
		t.Fatalf("static topics = %+v", got)
	}
	s := got[0].Spec
	if s.Partitions != 12 || s.ReplicationFactor != 3 || s.Config["min.insync.replicas"] != "2" || s.Config["retention.ms"] != "86400000" {
		t.Errorf("spec = %+v", s)
	}
	if d := got[1].Spec; d.Partitions != DefaultPartitions || d.ReplicationFactor != -1 || d.Config != nil {
		t.Errorf("default spec = %+v", d)
	}
	rt, err := r.Route(&Record{Device: "x", Topic: "devices/x/alarm"})
	if err != nil || rt.Spec.Name != "iot.alarms" || rt.Spec.Config["min.insync.replicas"] != "2" {
		t.Errorf("routed spec = %+v, %v", rt.Spec, err)
	}
}

func FuzzRoute(f *testing.F) {
	r, _ := NewRouter(nil)
	f.Add("devices/truck-7/position")
	f.Add("devices/a/b/c/#/+")
	f.Add("///")
	f.Fuzz(func(t *testing.T, topic string) {
		got, err := r.Route(&Record{Device: "d", Topic: topic})
		if err == nil && ValidTopicName(got.Topic) != nil {
			t.Fatalf("routed to invalid topic %q", got.Topic)
		}
	})
}

// matchPattern walks the topic without splitting it; it must agree with
// the plain reading: split on "/", then compare segment by segment.
func FuzzMatchPattern(f *testing.F) {
	for _, s := range [][2]string{
		{"devices/{device}/{stream}", "devices/truck-1/telemetry"},
		{"devices/{device}/#", "devices/truck-1"},
		{"devices/+/x", "devices//x"},
		{"a/#", "a/"},
		{"+", ""},
		{"a", "a/b"},
		{"{d}/{s}", "/x"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pattern, topic string) {
		pat, _, err := compilePattern(pattern)
		if err != nil {
			return
		}
		got, ok := matchPattern(pat, topic, nil)
		want, wok := splitMatch(pat, topic)
		if ok != wok || ok && !slices.Equal(got, want) {
			t.Fatalf("matchPattern(%q, %q) = %v %v, want %v %v", pattern, topic, got, ok, want, wok)
		}
	})
}

func splitMatch(pat []string, topic string) ([]kv, bool) {
	var out []kv
	segs := strings.Split(topic, "/")
	for i, p := range pat {
		if p == "#" {
			return append(out, kv{"rest", strings.Join(segs[i:], "/")}), true
		}
		if i >= len(segs) {
			return nil, false
		}
		switch {
		case p == "+":
		case len(p) > 2 && p[0] == '{':
			if segs[i] == "" {
				return nil, false
			}
			out = append(out, kv{p[1 : len(p)-1], segs[i]})
		default:
			if p != segs[i] {
				return nil, false
			}
		}
	}
	return out, len(segs) == len(pat)
}
