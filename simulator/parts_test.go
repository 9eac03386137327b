package simulator

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

func mustTime(t testing.TB, s string) time.Time {
	t.Helper()
	ts, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatal(err)
	}
	return ts
}

func TestSeqSet(t *testing.T) {
	tests := []struct {
		name string
		add  []uint64
		want string
	}{
		{"in order", []uint64{1, 2, 3, 4}, "1-4"},
		{"gap", []uint64{1, 2, 4, 5}, "1-2,4-5"},
		{"fill hole", []uint64{1, 2, 4, 5, 3}, "1-5"},
		{"join prev", []uint64{1, 5, 2}, "1-2,5"},
		{"join next", []uint64{1, 5, 4}, "1,4-5"},
		{"insert alone", []uint64{1, 9, 5}, "1,5,9"},
		{"before all", []uint64{5, 6, 1}, "1,5-6"},
		{"duplicates", []uint64{3, 3, 1, 1, 2, 2}, "1-3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s SeqSet
			for _, v := range tt.add {
				s.Add(v)
			}
			if got := s.String(); got != tt.want {
				t.Fatalf("got %s, want %s", got, tt.want)
			}
		})
	}
}

// TestSeqSetRandom checks SeqSet against a map.
func TestSeqSetRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for round := 0; round < 50; round++ {
		var s, o SeqSet
		ref, oref := map[uint64]bool{}, map[uint64]bool{}
		for i := 0; i < 300; i++ {
			v := uint64(rng.IntN(200)) + 1
			if added := s.Add(v); added == ref[v] {
				t.Fatalf("Add(%d) = %v with present=%v", v, added, ref[v])
			}
			ref[v] = true
			w := uint64(rng.IntN(200)) + 1
			o.Add(w)
			oref[w] = true
		}
		if s.Len() != uint64(len(ref)) {
			t.Fatalf("Len %d, want %d", s.Len(), len(ref))
		}
		var missing uint64
		for _, r := range s.Minus(&o) {
			for v := r.First; v <= r.Last; v++ {
				if !ref[v] || oref[v] {
					t.Fatalf("Minus has %d", v)
				}
				missing++
			}
		}
		want := uint64(0)
		for v := uint64(0); v <= 201; v++ {
			if s.Contains(v) != ref[v] {
				t.Fatalf("Contains(%d) wrong", v)
			}
			if ref[v] && !oref[v] {
				want++
			}
		}
		if missing != want {
			t.Fatalf("Minus covers %d, want %d", missing, want)
		}
		b, _ := json.Marshal(s)
		var back SeqSet
		if err := json.Unmarshal(b, &back); err != nil || back.String() != s.String() {
			t.Fatalf("json round trip: %s -> %v %s", b, err, back.String())
		}
	}
	var bad SeqSet
	if err := json.Unmarshal([]byte(`[[5,6],[1,2]]`), &bad); err == nil {
		t.Error("unordered ranges accepted")
	}
}

func TestHistogram(t *testing.T) {
	var h latencyHistogram
	if h.Quantile(0.5) != 0 {
		t.Fatal("empty histogram has a median")
	}
	for i := 1; i <= 100000; i++ {
		h.Record(time.Duration(i) * time.Microsecond)
	}
	tests := []struct {
		q    float64
		want time.Duration
	}{
		{0.5, 50 * time.Millisecond},
		{0.99, 99 * time.Millisecond},
		{0.999, 99900 * time.Microsecond},
		{1, 100 * time.Millisecond},
	}
	for _, tt := range tests {
		got := h.Quantile(tt.q)
		if diff := float64(got-tt.want) / float64(tt.want); diff < -0.02 || diff > 0.02 {
			t.Errorf("q%.3f = %s, want %s within 2%%", tt.q, got, tt.want)
		}
	}
	if h.Max() != 100*time.Millisecond || h.Count() != 100000 {
		t.Errorf("max %s count %d", h.Max(), h.Count())
	}
	for i := 0; i < histBuckets; i++ {
		if histIndex(histUpper(i)) != i {
			t.Fatalf("bucket %d: upper %d maps to %d", i, histUpper(i), histIndex(histUpper(i)))
		}
	}
	h.Record(1000 * time.Hour) // beyond range: lands in the last bucket
}

func TestOptionsValidate(t *testing.T) {
	tests := []struct {
		name string
		opt  Options
		key  string // "" = valid
	}{
		{"defaults with trucks", Options{Trucks: 1}, ""},
		{"sensors only", Options{Sensors: 1}, ""},
		{"nothing", Options{}, "trucks"},
		{"negative trucks", Options{Trucks: -1}, "trucks"},
		{"qos 3", Options{Trucks: 1, QoS: QoS(3)}, "qos"},
		{"qos 0 ok", Options{Trucks: 1, QoS: QoS(0)}, ""},
		{"protocol", Options{Trucks: 1, Protocol: "4.0"}, "protocol"},
		{"protocol 3.1.1", Options{Trucks: 1, Protocol: "3.1.1"}, ""},
		{"jitter", Options{Trucks: 1, Jitter: 1.5}, "jitter"},
		{"rate", Options{Trucks: 1, Rate: -1}, "rate"},
		{"in flight", Options{Trucks: 1, InFlight: 70000}, "in_flight"},
		{"broker", Options{Trucks: 1, Broker: "nohost"}, "broker"},
		{"coap", Options{Sensors: 1, CoAP: "nohost"}, "coap"},
		{"coap type", Options{Sensors: 1, CoAPType: "maybe"}, "coap_type"},
		{"cert without key", Options{Trucks: 1, CertFile: "c.pem"}, "cert_file"},
		{"reconnect", Options{Trucks: 1, ReconnectMin: time.Minute, ReconnectMax: time.Second}, "reconnect_max"},
		{"keep alive", Options{Trucks: 1, KeepAlive: time.Millisecond}, "keep_alive"},
		{"run id", Options{Trucks: 1, RunID: `a"b`}, "run_id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.opt.Validate()
			if tt.key == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidOptions) || !strings.Contains(err.Error(), " "+tt.key+":") {
				t.Fatalf("err = %v, want ErrInvalidOptions naming %s", err, tt.key)
			}
		})
	}
	o := Options{Trucks: 1}.WithDefaults()
	if *o.QoS != 1 || o.InFlight != 100 || o.Protocol != "5" {
		t.Errorf("load-test defaults: qos %d in_flight %d protocol %s", *o.QoS, o.InFlight, o.Protocol)
	}
	if o := (Options{Trucks: 1, Rate: 1}).WithDefaults(); o.InFlight != 10 {
		t.Errorf("realistic in_flight default %d, want 10", o.InFlight)
	}
}

func TestPacerAndBackoff(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 1))
	p := newPacer(10, 0.2, rng)
	now := time.Unix(1000, 0)
	p.start(now)
	for i := 0; i < 100; i++ {
		if p.wait(now) > 0 {
			t.Fatal("due message not due")
		}
		p.advance(now)
		w := p.wait(now)
		if w < 80*time.Millisecond || w > 120*time.Millisecond {
			t.Fatalf("interval %s, want 100ms ±20%%", w)
		}
		now = now.Add(w)
	}
	// Far behind: catch up by at most a second.
	now = now.Add(time.Hour)
	p.advance(now)
	if w := p.wait(now); w < -time.Second-200*time.Millisecond {
		t.Fatalf("behind by %s after a stall", -w)
	}
	for n, want := range []time.Duration{100, 200, 400, 800, 1000, 1000} {
		d := backoff(n, 100*time.Millisecond, time.Second, rng)
		if d < want*time.Millisecond/2 || d > want*time.Millisecond {
			t.Errorf("backoff(%d) = %s, want %dms/2..%dms", n, d, want, want)
		}
	}
}

func TestAppendFixed(t *testing.T) {
	tests := []struct {
		v    float64
		prec int
	}{
		{0, 1}, {53.504, 6}, {-0.04, 1}, {9.000001, 6}, {123.456, 0}, {-12.3456, 2},
		{0.05, 1}, {1e20, 2}, {99.95, 1}, {0.000001, 6}, {-0.0000004, 6}, {1.005, 2},
	}
	for _, tt := range tests {
		got := string(appendFixed(nil, tt.v, tt.prec))
		var want string
		if n, err := strconv.ParseFloat(got, 64); err != nil || math.Abs(n-tt.v) > 0.5/math.Pow(10, float64(tt.prec))+1e-9 {
			t.Errorf("appendFixed(%v, %d) = %q", tt.v, tt.prec, got)
		}
		want = strconv.FormatFloat(tt.v, 'f', tt.prec, 64)
		if got != want && !(strings.TrimPrefix(want, "-") == got) {
			t.Logf("appendFixed(%v, %d) = %q, strconv %q (rounding differs)", tt.v, tt.prec, got, want)
		}
	}
}

// TestAppendFixedDigits checks appendFixed's digits against their
// definition: the value times 10^prec, rounded half away from zero, split
// at the point, the fraction padded to prec digits, a sign only when the
// rounded value is not zero.
func TestAppendFixedDigits(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range 200000 {
		prec := i % 10
		v := (rng.Float64() - 0.5) * math.Pow(10, float64(rng.IntN(12)))
		if i%5 == 0 {
			v = math.Round(v*1000) / 1000 // many zeros in the fraction
		}
		if math.Abs(v)*pow10[prec] >= 1<<53 {
			continue
		}
		n := int64(math.Round(v * pow10[prec]))
		sign := ""
		if n < 0 {
			sign, n = "-", -n
		}
		p := int64(pow10[prec])
		want := fmt.Sprintf("%s%d.%0*d", sign, n/p, prec, n%p)
		if prec == 0 {
			want = fmt.Sprintf("%s%d", sign, n)
		}
		if got := string(appendFixed([]byte("x"), v, prec)); got != "x"+want {
			t.Fatalf("appendFixed(%v, %d) = %q, want %q", v, prec, got[1:], want)
		}
	}
}

// TestPayloadTime checks the payload's ts against time.RFC3339Nano in UTC,
// for times within one second (the cached date and time of day), going
// back, before 1970, in other zones and outside years 0 to 9999.
func TestPayloadTime(t *testing.T) {
	base := time.Date(2026, 3, 29, 0, 59, 59, 0, time.FixedZone("CET", 3600))
	var times []time.Time
	for _, ns := range []int64{0, 1, 10, 999999999, 100000000, 123456789, 120000000, 1e9, 1e9 + 5, -1, -1e9, -1e9 - 1} {
		times = append(times, base.Add(time.Duration(ns)))
	}
	times = append(times,
		base, time.Unix(0, 0), time.Unix(-1, 999999999), time.Unix(-86400*365, 5).In(time.FixedZone("x", -7*3600)),
		time.Date(0, 1, 1, 0, 0, 0, 7, time.UTC), time.Date(-1, 12, 31, 23, 59, 59, 90, time.UTC),
		time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC), time.Date(10000, 1, 1, 0, 0, 0, 1, time.UTC),
		time.Now(), time.Now(),
	)
	rng := rand.New(rand.NewPCG(5, 6))
	for range 10000 {
		times = append(times, time.Unix(rng.Int64N(1<<34)-1<<33, rng.Int64N(1e9)))
	}
	w := newPayloadWriter("d", "")
	for _, ts := range times {
		want := ts.UTC().Format(time.RFC3339Nano)
		if got := string(w.appendTime(nil, ts)); got != want {
			t.Fatalf("appendTime(%v) = %s, want %s", ts, got, want)
		}
	}
}

// TestOptionsYAML checks the options read from a config file the way the
// gateway's loader will: snake_case keys, typed durations, qos 0 kept.
func TestOptionsYAML(t *testing.T) {
	var o Options
	err := yaml.Unmarshal([]byte(`
broker: gw.example:1883
trucks: 20
sensors: 5
rate: 1.5
duration: 90s
ramp_up: 10s
qos: 0
protocol: "3.1.1"
in_flight: 8
password: "{device}-pw"
coap_type: non
ack_timeout: 2s
`), &o)
	if err != nil {
		t.Fatal(err)
	}
	if o.Broker != "gw.example:1883" || o.Trucks != 20 || o.Rate != 1.5 || o.Duration != 90*time.Second ||
		o.RampUp != 10*time.Second || o.QoS == nil || *o.QoS != 0 || o.InFlight != 8 || o.CoAPType != "non" ||
		o.AckTimeout != 2*time.Second || o.Protocol != "3.1.1" {
		t.Fatalf("decoded %+v", o)
	}
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	if o.WithDefaults().qos() != 0 {
		t.Fatal("qos 0 lost to the default")
	}
}

func TestReportJSON(t *testing.T) {
	rep := &Report{RunID: "r1", Acked: 3, Devices: map[string]*DeviceResult{"truck-0001": acked(SeqRange{1, 2}, SeqRange{4, 4})}}
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if got := back.Devices["truck-0001"]; got.Acked.String() != "1-2,4" || got.LastAcked != 4 || back.RunID != "r1" {
		t.Fatalf("round trip: %s -> %+v", b, got)
	}
}
