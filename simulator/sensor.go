package simulator

import (
	"math"
	"math/rand/v2"
)

// sensor is a stationary climate sensor: temperature follows its zone's
// set point with a daily swing and slow noise, cold rooms warm up when a
// door stays open, and the battery drains over about a year.
type sensor struct {
	rng       *rand.Rand
	zone      sensorZone
	phase     float64 // seconds into the day at the start
	t         float64 // simulated seconds since the start
	temp      float64
	humidity  float64
	excursion float64 // degrees above normal from an open door, decaying
	battery   float64 // percent
	secPerMsg float64
	emitted   uint64
	body      []byte // what next returned last
}

var _ generator = (*sensor)(nil)

func newSensor(d *Device, seed int64, secPerMsg float64) *sensor {
	rng := deviceRand(seed, d.ID, saltPayload)
	z := zoneByName(d.Zone)
	s := &sensor{
		rng:       rng,
		zone:      z,
		phase:     rng.Float64() * 86400,
		battery:   40 + rng.Float64()*60,
		secPerMsg: secPerMsg,
	}
	s.temp = s.normal() + rng.NormFloat64()*0.2
	s.humidity = z.humidity + rng.NormFloat64()*2
	return s
}

// normal is the zone's temperature at the current time of day, warmest in
// the afternoon.
func (s *sensor) normal() float64 {
	day := 2 * math.Pi * (s.t + s.phase) / 86400
	return s.zone.tempC + s.zone.swing*math.Sin(day-math.Pi/2-0.8)
}

func (s *sensor) next() (string, []byte) {
	dt := s.secPerMsg
	if s.emitted == 0 {
		dt = 0
	}
	s.emitted++
	s.t += dt
	k := 1 - math.Exp(-dt/900)
	s.temp += (s.normal()-s.temp)*k + s.rng.NormFloat64()*0.03*math.Sqrt(math.Min(dt, 3600)/60)
	s.excursion *= math.Exp(-dt / 400)
	if s.zone.doors && s.rng.Float64() < dt/5400 {
		s.excursion += 3 + s.rng.Float64()*5
	}
	s.humidity += (s.zone.humidity-s.humidity)*k + s.rng.NormFloat64()*0.3*math.Sqrt(math.Min(dt, 3600)/60)
	s.humidity = math.Max(5, math.Min(100, s.humidity))
	s.battery = math.Max(0, s.battery-dt*100/(365*86400))
	s.body = jsonBody(s.body[:0]).
		num("temperature_c", s.temp+s.excursion, 2).
		num("humidity_pct", math.Min(100, s.humidity+s.excursion*0.8), 1).
		int("battery_pct", int64(math.Ceil(s.battery))).
		str("zone", s.zone.name).end()
	return StreamClimate, s.body
}
