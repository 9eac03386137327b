package simulator

import (
	"math"
	"math/rand/v2"
	"strings"
	"time"
)

// Event types and severities on the events stream.
const (
	EventHarshBraking = "harsh_braking"
	EventIdling       = "idling"
	EventEngineTemp   = "engine_temperature"
	EventFuelLow      = "fuel_low"
	EventRefuel       = "refuel"
	EventDoorOpen     = "door_open"
	EventDoorClose    = "door_close"

	SeverityInfo     = "info"
	SeverityWarning  = "warning"
	SeverityCritical = "critical"
)

// Truck model constants. Speeds in m/s, times in seconds.
const (
	ambientC        = 12.0   // outside temperature, engine cools towards it
	idleEventAfter  = 300.0  // standing with the engine running this long is idling
	engineEvery     = 5      // an engine message every this many position messages
	maxTickSeconds  = 1.0    // physics integrate in steps of at most this
	maxTicksPerStep = 3600   // beyond, ticks get longer rather than more
	jamEverySeconds = 2400.0 // mean driving time between jams on motorways
)

// truck is one simulated truck: where it is on its route, how it drives,
// and its engine. It advances in simulated time as messages are taken.
type truck struct {
	rng *rand.Rand
	rt  *route

	dir      int     // +1 driving from the first point, -1 back
	pos      float64 // metres from the route's first point
	speed    float64 // m/s
	vmax     float64 // governed top speed
	accel    float64 // m/s² when speeding up
	decel    float64 // m/s² normal braking
	odometer float64 // km
	tank     float64 // litres
	fuel     float64 // litres

	engineOn bool
	rpm      float64
	coolant  float64
	accelOn  bool // accelerated in the last tick

	stopLeft float64 // seconds still to stand at a stop
	stopAt   int     // point index of the current stop
	stopKind string  // depot, delivery or rest
	doorOpen bool

	jamLeft, jamSpeed float64
	idle              float64
	idleReported      bool
	faultLeft         float64 // seconds of a cooling fault still to run
	tempLevel         int     // 0 normal, 1 warned, 2 critical
	fuelLevel         int     // 0 normal, 1 low, 2 critical

	secPerMsg float64 // simulated seconds per message
	emitted   uint64  // messages returned by next
	stepAt    uint64  // emitted at the last physics step
	steps     uint64

	// The messages of the last step, of which next has returned taken.
	// Their bodies lie one after the other in bodies, which the next step
	// overwrites: a truck allocates nothing per message once warm.
	queue  []queued
	taken  int
	bodies []byte

	// Where on the route the last lookups found the truck; it moves little
	// between two, so the next lookup tries there first.
	seg     int // segment of the last locate
	nextHit int // search result of the last ahead
}

type queued struct {
	stream     string
	start, end int // the body in bodies
}

var _ generator = (*truck)(nil)

// newTruck places the truck somewhere on its route, driving.
func newTruck(d *Device, seed int64, secPerMsg float64) *truck {
	rng := deviceRand(seed, d.ID, saltPayload)
	rt := d.route
	t := &truck{
		rng:       rng,
		rt:        rt,
		dir:       1,
		vmax:      (85 + rng.Float64()*4) / 3.6,
		accel:     0.35 + rng.Float64()*0.25,
		decel:     0.7 + rng.Float64()*0.4,
		odometer:  20000 + rng.Float64()*880000,
		tank:      float64(400 + 50*rng.IntN(7)),
		engineOn:  true,
		coolant:   84 + rng.Float64()*4,
		stopAt:    -1,
		secPerMsg: secPerMsg,
		queue:     make([]queued, 0, 4),
		bodies:    make([]byte, 0, 512),
	}
	if rng.IntN(2) == 1 {
		t.dir = -1
	}
	t.fuel = t.tank * (0.2 + rng.Float64()*0.75)
	t.pos = rt.length() * (0.02 + rng.Float64()*0.96)
	j, _ := t.ahead()
	_, limit := t.limits(j)
	t.speed = math.Min(t.vmax, limit) * (0.6 + rng.Float64()*0.4)
	t.rpm = t.engineRPM()
	return t
}

// next returns the truck's next message, stepping the physics when the
// messages of the last step are used up.
func (t *truck) next() (string, []byte) {
	if t.taken == len(t.queue) {
		t.queue, t.taken, t.bodies = t.queue[:0], 0, t.bodies[:0]
		t.step(float64(t.emitted-t.stepAt) * t.secPerMsg)
		t.stepAt = t.emitted
	}
	q := t.queue[t.taken]
	t.taken++
	t.emitted++
	return q.stream, t.bodies[q.start:q.end]
}

// enqueue queues a message whose body was appended to bodies from start on.
func (t *truck) enqueue(stream string, start int) {
	t.queue = append(t.queue, queued{stream, start, len(t.bodies)})
}

// locate returns the truck's position and heading.
func (t *truck) locate() (lat, lon, heading float64) {
	t.seg, lat, lon, heading = t.rt.locate(t.pos, t.dir, t.seg)
	return lat, lon, heading
}

// step advances the simulation by dt seconds and queues the messages that
// describe it: events as they happened, the position, and every fifth step
// the engine.
func (t *truck) step(dt float64) {
	n := int(math.Ceil(dt / maxTickSeconds))
	if n > maxTicksPerStep {
		n = maxTicksPerStep
	}
	for i := 0; i < n; i++ {
		t.tick(dt / float64(n))
	}
	lat, lon, heading := t.locate()
	start := len(t.bodies)
	t.bodies = jsonBody(t.bodies).
		num("lat", lat, 6).num("lon", lon, 6).
		num("speed_kmh", t.speed*3.6, 1).num("heading", heading, 1).
		num("odometer_km", t.odometer, 2).end()
	t.enqueue(StreamPosition, start)
	if t.steps%engineEvery == 0 {
		start := len(t.bodies)
		t.bodies = jsonBody(t.bodies).
			int("rpm", int64(math.Round(t.rpm))).num("coolant_c", t.coolant, 1).
			num("fuel_pct", 100*t.fuel/t.tank, 1).boolean("engine_on", t.engineOn).end()
		t.enqueue(StreamEngine, start)
	}
	t.steps++
}

// event queues an events-stream message; extra adds type-specific fields.
func (t *truck) event(typ, severity string, extra func(jsonBody) jsonBody) {
	lat, lon, _ := t.locate()
	start := len(t.bodies)
	b := jsonBody(t.bodies).str("type", typ).str("severity", severity).
		num("lat", lat, 6).num("lon", lon, 6).num("speed_kmh", t.speed*3.6, 1)
	if extra != nil {
		b = extra(b)
	}
	t.bodies = b.end()
	t.enqueue(StreamEvents, start)
}

// tick advances the truck by h seconds.
func (t *truck) tick(h float64) {
	if t.faultLeft > 0 {
		t.faultLeft -= h
	} else if t.rng.Float64() < h/(8*3600) {
		t.faultLeft = 600 + t.rng.Float64()*1800 // a sticking thermostat
	}
	if t.stopLeft > 0 {
		t.stopLeft -= h
		t.speed, t.accelOn = 0, false
		if t.stopLeft <= 0 {
			t.depart()
		}
		t.runEngine(h, 0)
		return
	}
	if !t.engineOn {
		t.engineOn = true
	}

	j, dist := t.ahead()
	limit, next := t.limits(j)
	target := math.Min(t.vmax, limit)
	t.traffic(h, limit)
	if t.jamLeft > 0 {
		target = math.Min(target, t.jamSpeed)
	}
	// Brake in time for a lower limit or a stop at the next point.
	if allowed := math.Sqrt(next*next + 2*t.decel*dist); allowed < target {
		target = math.Max(allowed, math.Min(target, 1.5))
	}
	prev := t.speed
	if t.speed < target {
		t.speed = math.Min(target, t.speed+t.accel*h)
	} else {
		t.speed = math.Max(target, t.speed-2*t.decel*h)
	}
	t.accelOn = t.speed > prev+0.01

	d := t.speed * h
	if d >= dist {
		t.pos = t.rt.cum[j]
		if t.halts(j) {
			t.arrive(j)
		} else {
			t.pos = math.Max(0, math.Min(t.rt.length(), t.pos+float64(t.dir)*(d-dist)))
		}
	} else {
		t.pos += float64(t.dir) * d
	}
	t.odometer += d / 1000
	t.runEngine(h, d)

	if t.speed < 0.5 && t.engineOn {
		t.idle += h
		if t.idle >= idleEventAfter && !t.idleReported {
			t.idleReported = true
			idle := t.idle
			t.event(EventIdling, SeverityInfo, func(b jsonBody) jsonBody { return b.int("idle_s", int64(idle)) })
		}
	} else if t.speed >= 0.5 {
		t.idle, t.idleReported = 0, false
	}
}

// traffic starts and ends jams; a jam that starts at speed sometimes makes
// the driver brake hard. Town streets see the odd harsh stop too.
func (t *truck) traffic(h, limit float64) {
	if t.jamLeft > 0 {
		t.jamLeft -= h
	} else if limit >= 75/3.6 && t.rng.Float64() < h/jamEverySeconds {
		t.jamLeft = 60 + t.rng.Float64()*540
		t.jamSpeed = t.rng.Float64() * 25 / 3.6
		if t.rng.Float64() < 0.25 {
			t.jamSpeed = 0 // standstill
		}
		if t.speed > 50/3.6 && t.rng.Float64() < 0.35 {
			t.harshBrake(math.Max(t.jamSpeed, t.speed*0.4))
		}
	}
	if limit <= 50/3.6 && t.speed > 30/3.6 && t.rng.Float64() < h/3600 {
		t.harshBrake(t.speed * 0.45)
	}
}

func (t *truck) harshBrake(to float64) {
	decel := 3.5 + t.rng.Float64()*3
	from := t.speed
	t.speed = to
	sev := SeverityWarning
	if decel > 5.5 {
		sev = SeverityCritical
	}
	t.event(EventHarshBraking, sev, func(b jsonBody) jsonBody {
		return b.num("decel_ms2", decel, 1).num("from_kmh", from*3.6, 1)
	})
}

// ahead returns the index of the next point in the driving direction and
// the distance to it in metres.
func (t *truck) ahead() (int, float64) {
	c := t.rt.cum
	if t.dir > 0 {
		j := searchNear(c, t.pos+1e-6, t.nextHit)
		t.nextHit = j
		for j < len(c)-1 && c[j] <= t.pos {
			j++
		}
		if j >= len(c) {
			j = len(c) - 1
		}
		return j, math.Max(0, c[j]-t.pos)
	}
	j := searchNear(c, t.pos-1e-6, t.nextHit)
	t.nextHit = j
	j--
	if j < 0 {
		j = 0
	}
	return j, math.Max(0, t.pos-c[j])
}

// limits returns the speed the truck may drive on its current segment and
// the speed it must be down to at the next point j, from ahead (0 when it
// halts there), both in m/s. Trucks drive a little over the posted 80 km/h.
func (t *truck) limits(j int) (now, next float64) {
	p := t.rt.points
	cur, after := j-1, j
	if t.dir < 0 {
		cur, after = j, j-1
	}
	cur = max(0, min(cur, len(p)-1))
	now = p[cur].limit * 1.06 / 3.6
	if t.halts(j) || after < 0 || after >= len(p) {
		return now, 0
	}
	return now, p[after].limit * 1.06 / 3.6
}

// halts tells whether the truck stops at point j: the route's ends and
// points with a stop.
func (t *truck) halts(j int) bool {
	if j == t.stopAt {
		return false // just left it
	}
	return j == 0 || j == len(t.rt.points)-1 || t.rt.points[j].stop > 0
}

// arrive halts the truck at point j.
func (t *truck) arrive(j int) {
	p := t.rt.points[j]
	t.speed, t.accelOn = 0, false
	t.stopAt = j
	stop := p.stop
	if stop == 0 {
		stop = 20 * time.Minute // at an unmarked route end
	}
	t.stopLeft = stop.Seconds() * (0.7 + t.rng.Float64()*0.6)
	switch {
	case j == 0 || strings.Contains(p.place, "depot"):
		t.stopKind = "depot"
	case strings.Contains(p.place, "Rast"):
		t.stopKind = "rest"
	default:
		t.stopKind = "delivery"
	}
	// Most drivers switch off; some leave the engine idling.
	if t.rng.Float64() < 0.8 {
		t.engineOn = false
	}
	if t.stopKind != "rest" {
		t.doorOpen = true
		t.event(EventDoorOpen, SeverityInfo, func(b jsonBody) jsonBody { return b.str("door", "rear") })
	}
	pct := 100 * t.fuel / t.tank
	if (t.stopKind == "depot" && pct < 60) || pct < 25 {
		liters := t.tank*(0.95+t.rng.Float64()*0.05) - t.fuel
		t.fuel += liters
		t.fuelLevel = 0
		t.event(EventRefuel, SeverityInfo, func(b jsonBody) jsonBody { return b.num("liters", liters, 1) })
	}
}

// depart ends a stop: doors shut, engine on, and at a route end the truck
// turns round.
func (t *truck) depart() {
	t.stopLeft = 0
	if t.doorOpen {
		t.doorOpen = false
		t.event(EventDoorClose, SeverityInfo, func(b jsonBody) jsonBody { return b.str("door", "rear") })
	}
	t.engineOn = true
	if t.stopAt == len(t.rt.points)-1 {
		t.dir = -1
	} else if t.stopAt == 0 {
		t.dir = 1
	}
}

// engineRPM is a plausible engine speed for the truck's current speed: a
// 12-speed gearbox keeps a cruising truck near 1200 rpm.
func (t *truck) engineRPM() float64 {
	if !t.engineOn {
		return 0
	}
	kmh := t.speed * 3.6
	if kmh < 1 {
		return 600
	}
	rpm := 650 + kmh*7.2
	if t.accelOn {
		rpm += 350
	}
	return math.Min(rpm, 2100)
}

// runEngine updates rpm, coolant and fuel for h seconds in which the truck
// drove d metres, and raises temperature and fuel events.
func (t *truck) runEngine(h, d float64) {
	if !t.engineOn {
		t.rpm = 0
		t.coolant += (ambientC - t.coolant) * (1 - math.Exp(-h/900))
		return
	}
	t.rpm = math.Max(550, t.engineRPM()+t.rng.NormFloat64()*15)
	load := 0.15
	if t.speed > 0.5 {
		load = 0.45 + 0.4*t.speed/t.vmax
		if t.accelOn {
			load = 1
		}
	}
	target := 82 + 9*load
	if t.faultLeft > 0 {
		target += 26
	}
	t.coolant += (target - t.coolant) * (1 - math.Exp(-h/120))

	if t.speed > 0.5 {
		t.fuel -= (24 + 14*load) / 100 * d / 1000
	} else {
		t.fuel -= 2.4 / 3600 * h
	}
	t.fuel = math.Max(0, t.fuel)

	c := t.coolant
	switch {
	case c >= 110 && t.tempLevel < 2:
		t.tempLevel = 2
		t.event(EventEngineTemp, SeverityCritical, func(b jsonBody) jsonBody { return b.num("coolant_c", c, 1) })
	case c >= 104 && t.tempLevel < 1:
		t.tempLevel = 1
		t.event(EventEngineTemp, SeverityWarning, func(b jsonBody) jsonBody { return b.num("coolant_c", c, 1) })
	case c < 98:
		t.tempLevel = 0
	}
	pct := 100 * t.fuel / t.tank
	switch {
	case pct < 5 && t.fuelLevel < 2:
		t.fuelLevel = 2
		t.event(EventFuelLow, SeverityCritical, func(b jsonBody) jsonBody { return b.num("fuel_pct", pct, 1) })
	case pct < 15 && t.fuelLevel < 1:
		t.fuelLevel = 1
		t.event(EventFuelLow, SeverityWarning, func(b jsonBody) jsonBody { return b.num("fuel_pct", pct, 1) })
	}
}
