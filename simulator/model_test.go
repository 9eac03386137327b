package simulator

import (
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"
)

func TestBuiltinRoutesParse(t *testing.T) {
	net, err := parseRoutes(strings.NewReader(builtinRoutes))
	if err != nil {
		t.Fatal(err)
	}
	if len(net.routes) < 5 || len(net.depots) < 2 {
		t.Fatalf("got %d routes, %d depots", len(net.routes), len(net.depots))
	}
	for _, r := range net.routes {
		km := r.length() / 1000
		if km < 10 || km > 400 {
			t.Errorf("route %s: %.0f km, want a plausible 10..400", r.id, km)
		}
		// No segment jumps further than a motorway exit spacing allows:
		// catches a typo'd coordinate.
		for i := 1; i < len(r.cum); i++ {
			if seg := r.cum[i] - r.cum[i-1]; seg > 45000 {
				t.Errorf("route %s: segment %d is %.0f km", r.id, i, seg/1000)
			}
		}
	}
}

func TestParseRoutesErrors(t *testing.T) {
	tests := []struct {
		name, data, want string
	}{
		{"empty", "# nothing\n", "no routes"},
		{"point before route", "1 2 50\n", "line 1: point before the first route line"},
		{"unknown depot", "route r1 nowhere Name\n", "unknown depot"},
		{"bad latitude", "depot d 91 9 D\n", "line 1: coordinates"},
		{"bad limit", "depot d 53 9 D\nroute r d R\n53 9 500\n", "line 3: speed limit"},
		{"bad stop", "depot d 53 9 D\nroute r d R\n53 9 50 stop=soon\n", "line 3: stop=soon"},
		{"one point", "depot d 53 9 D\nroute r d R\n53 9 50\n", "needs at least 2 points"},
		{"too short", "depot d 53 9 D\nroute r d R\n53 9 50\n53 9.0001 50\n", "shorter than 100 m"},
		{"duplicate route", "depot d 53 9 D\nroute r d R\n53 9 50\n53.1 9 50\nroute r d R\n", "defined twice"},
		{"long line", "# " + strings.Repeat("x", maxRouteLine) + "\n", "too long"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseRoutes(strings.NewReader(tt.data))
			if !errors.Is(err, ErrRouteData) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want ErrRouteData containing %q", err, tt.want)
			}
		})
	}
}

func FuzzParseRoutes(f *testing.F) {
	f.Add(builtinRoutes)
	f.Add("depot d 53 9 D\nroute r d R\n53 9 50 stop=1m x\n53.1 9 50\n")
	f.Add("depot d NaN 9 D\nroute r d R\n53 9 Inf\n")
	f.Add("route\n")
	f.Fuzz(func(t *testing.T, data string) {
		net, err := parseRoutes(strings.NewReader(data))
		if err != nil {
			return
		}
		for _, r := range net.routes {
			if len(r.points) < 2 || len(r.cum) != len(r.points) || r.depot == nil {
				t.Fatalf("route %s: malformed result", r.id)
			}
			for i := 1; i < len(r.cum); i++ {
				if !(r.cum[i] >= r.cum[i-1]) {
					t.Fatalf("route %s: distances not increasing", r.id)
				}
			}
			// Any position on an accepted route must locate.
			_, lat, lon, h := r.locate(r.length()/2, -1, -1)
			if math.IsNaN(lat) || math.IsNaN(lon) || math.IsNaN(h) {
				t.Fatalf("route %s: NaN position", r.id)
			}
		}
	})
}

func testFleet(t testing.TB, o Options) []Device {
	t.Helper()
	devs, err := Fleet(o)
	if err != nil {
		t.Fatal(err)
	}
	return devs
}

func TestFleet(t *testing.T) {
	devs := testFleet(t, Options{Trucks: 3, Sensors: 2, Seed: 7, Password: "pw-{device}"})
	if len(devs) != 5 {
		t.Fatalf("got %d devices", len(devs))
	}
	wantIDs := []string{"truck-0001", "truck-0002", "truck-0003", "sensor-0001", "sensor-0002"}
	for i, d := range devs {
		if d.ID != wantIDs[i] {
			t.Errorf("device %d: id %s, want %s", i, d.ID, wantIDs[i])
		}
	}
	tr := devs[0]
	if tr.Kind != KindTruck || tr.Protocol != ProtocolMQTT || tr.Secret != "pw-truck-0001" ||
		tr.Driver == "" || tr.Model == "" || tr.Route == "" || tr.Fleet == "" || tr.Plate == "" {
		t.Errorf("truck reference data incomplete: %+v", tr)
	}
	se := devs[3]
	if se.Kind != KindSensor || se.Protocol != ProtocolCoAP || se.Zone == "" || se.Secret != "" || se.Lat == 0 {
		t.Errorf("sensor reference data incomplete: %+v", se)
	}
	ref := tr.Ref()
	if ref["driver"] != tr.Driver || ref["route"] != tr.Route || ref["zone"] != "" {
		t.Errorf("Ref() = %v", ref)
	}
	if _, ok := ref["secret"]; ok {
		t.Error("Ref() leaks the secret")
	}
	// A device's data does not depend on the fleet size; it does on the seed.
	big := testFleet(t, Options{Trucks: 50, Seed: 7, Password: "pw-{device}"})
	if big[1].Driver != devs[1].Driver || big[1].Route != devs[1].Route {
		t.Error("truck-0002 changed with the fleet size")
	}
	other := testFleet(t, Options{Trucks: 50, Seed: 8})
	same := 0
	for i := range other {
		if other[i].Driver == big[i].Driver && other[i].Plate == big[i].Plate {
			same++
		}
	}
	if same > 5 {
		t.Errorf("%d of 50 trucks identical under another seed", same)
	}
	if _, err := Fleet(Options{}); !errors.Is(err, ErrInvalidOptions) {
		t.Errorf("Fleet of nothing: err = %v", err)
	}
}

// drive takes n messages from a generator and decodes them.
// Only events and every sample-th message of the other streams are decoded:
// JSON decoding costs far more than generating.
func drive(g generator, n, sample int) (streams []string, payloads []map[string]any) {
	for i := 0; i < n; i++ {
		s, body := g.next()
		if s != StreamEvents && i%sample != 0 {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(append([]byte(`{"x":0`), body...), &m); err != nil {
			panic(err)
		}
		streams = append(streams, s)
		payloads = append(payloads, m)
	}
	return streams, payloads
}

func TestTruckDeterministic(t *testing.T) {
	devs := testFleet(t, Options{Trucks: 1, Seed: 42})
	a, b := newTruck(&devs[0], 42, 1), newTruck(&devs[0], 42, 1)
	for i := 0; i < 20000; i++ {
		s1, b1 := a.next()
		s2, b2 := b.next()
		if s1 != s2 || string(b1) != string(b2) {
			t.Fatalf("message %d differs: %s %s vs %s %s", i, s1, b1, s2, b2)
		}
	}
	c := newTruck(&devs[0], 43, 1)
	_, b1 := a.next()
	_, b3 := c.next()
	if string(b1) == string(b3) {
		t.Error("another seed gives the same payload")
	}
}

// TestTruckRealistic drives a fleet for a simulated day at one message a
// second and checks that what comes out is what a data team would expect.
func TestTruckRealistic(t *testing.T) {
	devs := testFleet(t, Options{Trucks: 12, Seed: 1})
	events := map[string]int{}
	counts := map[string]int{}
	const n = 86400
	for i := range devs {
		tr := newTruck(&devs[i], 1, 1)
		streams, ps := drive(tr, n, 10)
		lastOdo := 0.0
		moving, positions := 0, 0
		for j, p := range ps {
			counts[streams[j]]++
			switch streams[j] {
			case StreamPosition:
				lat, lon, kmh := p["lat"].(float64), p["lon"].(float64), p["speed_kmh"].(float64)
				if lat < 52 || lat > 55 || lon < 8 || lon > 14 {
					t.Fatalf("%s: position %v,%v outside northern Germany", devs[i].ID, lat, lon)
				}
				if kmh < 0 || kmh > 95 {
					t.Fatalf("%s: speed %v km/h", devs[i].ID, kmh)
				}
				positions++
				if kmh > 5 {
					moving++
				}
				if h := p["heading"].(float64); h < 0 || h >= 360 {
					t.Fatalf("heading %v", h)
				}
				odo := p["odometer_km"].(float64)
				if odo < lastOdo {
					t.Fatalf("odometer went back: %v after %v", odo, lastOdo)
				}
				lastOdo = odo
			case StreamEngine:
				if rpm := p["rpm"].(float64); rpm < 0 || rpm > 2500 {
					t.Fatalf("rpm %v", rpm)
				}
				if f := p["fuel_pct"].(float64); f < 0 || f > 100 {
					t.Fatalf("fuel %v", f)
				}
			case StreamEvents:
				events[p["type"].(string)]++
				if s := p["severity"].(string); s != SeverityInfo && s != SeverityWarning && s != SeverityCritical {
					t.Fatalf("severity %q", s)
				}
			}
		}
		// A truck spends a good part of the day driving and some standing.
		if share := float64(moving) / float64(positions); share < 0.2 || share > 0.95 {
			t.Errorf("%s moving only %.0f%% of the time", devs[i].ID, 100*share)
		}
	}
	t.Logf("streams %v, events %v", counts, events)
	for _, typ := range []string{EventHarshBraking, EventDoorOpen, EventDoorClose, EventIdling, EventEngineTemp} {
		if events[typ] == 0 {
			t.Errorf("no %s event in %d truck-days", typ, len(devs))
		}
	}
	if eng, pos := counts[StreamEngine], counts[StreamPosition]; eng*engineEvery < pos*8/10 || eng*engineEvery > pos*12/10 {
		t.Errorf("engine %d vs position %d messages, want 1 in %d", eng, pos, engineEvery)
	}
}

func TestSensor(t *testing.T) {
	devs := testFleet(t, Options{Sensors: 10, Seed: 3})
	for i := range devs {
		s := newSensor(&devs[i], 3, 60)
		z := zoneByName(devs[i].Zone)
		streams, ps := drive(s, 24*60, 1)
		for j, p := range ps {
			if streams[j] != StreamClimate {
				t.Fatalf("stream %s", streams[j])
			}
			temp, hum := p["temperature_c"].(float64), p["humidity_pct"].(float64)
			if math.Abs(temp-z.tempC) > z.swing+12 || hum < 5 || hum > 100 {
				t.Fatalf("%s in %s: %v°C %v%%", devs[i].ID, z.name, temp, hum)
			}
		}
	}
	a, b := newSensor(&devs[0], 3, 60), newSensor(&devs[0], 3, 60)
	for i := 0; i < 100; i++ {
		_, x := a.next()
		_, y := b.next()
		if string(x) != string(y) {
			t.Fatal("sensor not deterministic")
		}
	}
}

func TestAppendPayload(t *testing.T) {
	devs := testFleet(t, Options{Trucks: 1})
	_, body := newTruck(&devs[0], 0, 1).next()
	var m map[string]any
	b := newPayloadWriter("truck-0001", "r1").append(nil, 7, mustTime(t, "2026-01-02T03:04:05.123456789Z"), body)
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	if m["device"] != "truck-0001" || m["seq"] != 7.0 || m["ts"] != "2026-01-02T03:04:05.123456789Z" || m["run"] != "r1" {
		t.Errorf("header: %s", b)
	}
	for _, k := range []string{"lat", "lon", "speed_kmh", "heading", "odometer_km"} {
		if _, ok := m[k]; !ok {
			t.Errorf("position payload lacks %s: %s", k, b)
		}
	}
}
