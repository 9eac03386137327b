package simulator

import (
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"strconv"
)

// Device kinds and the protocols they speak.
const (
	KindTruck  = "truck"
	KindSensor = "sensor"

	ProtocolMQTT = "mqtt"
	ProtocolCoAP = "coap"
)

// Device is one simulated device and the reference data a device registry
// and the enrichment store hold for it. Truck fields are empty for sensors
// and the other way round.
type Device struct {
	ID       string `json:"id" yaml:"id"`             // truck-0001, sensor-0001
	Kind     string `json:"kind" yaml:"kind"`         // KindTruck or KindSensor
	Protocol string `json:"protocol" yaml:"protocol"` // ProtocolMQTT or ProtocolCoAP
	// Secret is the MQTT password or DTLS pre-shared key the device uses,
	// from the password or coap_psk pattern; empty when none is set.
	Secret string `json:"secret,omitempty" yaml:"secret,omitempty"`

	Fleet     string  `json:"fleet" yaml:"fleet"`           // operating company
	Depot     string  `json:"depot" yaml:"depot"`           // home depot id (a sensor's site)
	DepotName string  `json:"depot_name" yaml:"depot_name"` // human-readable depot name
	Lat       float64 `json:"lat" yaml:"lat"`               // home depot (truck) or sensor location
	Lon       float64 `json:"lon" yaml:"lon"`

	Driver    string `json:"driver,omitempty" yaml:"driver,omitempty"`         // truck driver's name
	Model     string `json:"model,omitempty" yaml:"model,omitempty"`           // vehicle make and model
	Plate     string `json:"plate,omitempty" yaml:"plate,omitempty"`           // licence plate
	Route     string `json:"route,omitempty" yaml:"route,omitempty"`           // route id
	RouteName string `json:"route_name,omitempty" yaml:"route_name,omitempty"` // route description

	Zone string `json:"zone,omitempty" yaml:"zone,omitempty"` // sensor's zone: freezer, cold-room, ...

	route *route
}

// Ref returns the device's reference data as flat string fields, the shape
// an enrichment store (a Redis hash, a JSON file) keeps: kind, fleet, depot,
// depot_name, lat, lon and driver, model, plate, route, route_name for
// trucks or zone for sensors. Empty fields are left out; secrets are never
// included.
func (d Device) Ref() map[string]string {
	m := map[string]string{
		"kind":       d.Kind,
		"fleet":      d.Fleet,
		"depot":      d.Depot,
		"depot_name": d.DepotName,
		"lat":        strconv.FormatFloat(d.Lat, 'f', 5, 64),
		"lon":        strconv.FormatFloat(d.Lon, 'f', 5, 64),
		"driver":     d.Driver,
		"model":      d.Model,
		"plate":      d.Plate,
		"route":      d.Route,
		"route_name": d.RouteName,
		"zone":       d.Zone,
	}
	for k, v := range m {
		if v == "" {
			delete(m, k)
		}
	}
	return m
}

// Fleet returns the devices Run simulates with these options: trucks first,
// then sensors, with reference data drawn from the seed. A device's data
// depends only on the seed, its id and the route data, not on the size of
// the fleet, so truck-0007 is the same truck in a fleet of 10 or 10000.
func Fleet(opts Options) ([]Device, error) {
	o := opts.WithDefaults()
	if err := o.Validate(); err != nil {
		return nil, err
	}
	roads, err := loadRoutes(o.RoutesFile)
	if err != nil {
		return nil, err
	}
	return buildFleet(o, roads), nil
}

func buildFleet(o Options, roads *roadNetwork) []Device {
	devs := make([]Device, 0, o.Trucks+o.Sensors)
	for i := 0; i < o.Trucks; i++ {
		id := deviceID(KindTruck, o.FirstDevice+i)
		rng := deviceRand(o.Seed, id, saltRef)
		rt := roads.routes[rng.IntN(len(roads.routes))]
		d := Device{
			ID: id, Kind: KindTruck, Protocol: ProtocolMQTT,
			Secret:    secret(o.Password, id),
			Fleet:     fleetOf(roads, rt.depot),
			Depot:     rt.depot.id,
			DepotName: rt.depot.name,
			Lat:       rt.depot.lat,
			Lon:       rt.depot.lon,
			Driver:    pick(rng, firstNames) + " " + pick(rng, lastNames),
			Model:     pick(rng, truckModels),
			Plate:     fmt.Sprintf("HH-%c%c %d", 'A'+rng.IntN(26), 'A'+rng.IntN(26), 100+rng.IntN(9900)),
			Route:     rt.id,
			RouteName: rt.name,
			route:     rt,
		}
		devs = append(devs, d)
	}
	for i := 0; i < o.Sensors; i++ {
		id := deviceID(KindSensor, o.FirstDevice+i)
		rng := deviceRand(o.Seed, id, saltRef)
		dp := roads.depots[rng.IntN(len(roads.depots))]
		z := sensorZones[rng.IntN(len(sensorZones))]
		d := Device{
			ID: id, Kind: KindSensor, Protocol: ProtocolCoAP,
			Secret:    secret(o.CoAPPSK, id),
			Fleet:     fleetOf(roads, dp),
			Depot:     dp.id,
			DepotName: dp.name,
			// Within about 150 m of the depot's reference point.
			Lat:  dp.lat + (rng.Float64()-0.5)*0.0027,
			Lon:  dp.lon + (rng.Float64()-0.5)*0.0045,
			Zone: z.name,
		}
		devs = append(devs, d)
	}
	return devs
}

// deviceID formats truck-0001 style ids; numbers past 9999 just grow.
func deviceID(kind string, n int) string {
	return fmt.Sprintf("%s-%04d", kind, n)
}

// Salts that give a device independent random streams, so that changing
// one (say, the timing of sends) leaves the others (payload values)
// unchanged.
const (
	saltRef     = 0x5265662044617461 // reference data
	saltPayload = 0x5061796c6f616421 // physics and payload values
	saltTiming  = 0x54696d696e672121 // jitter and backoff
)

// deviceRand returns a random stream for one device and purpose.
func deviceRand(seed int64, id string, salt uint64) *rand.Rand {
	h := fnv.New64a()
	h.Write([]byte(id))
	return rand.New(rand.NewPCG(uint64(seed)^splitmix(h.Sum64()), salt))
}

func splitmix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

func pick(rng *rand.Rand, from []string) string { return from[rng.IntN(len(from))] }

// fleetOf names the company operating from a depot.
func fleetOf(roads *roadNetwork, d *depot) string {
	for i, x := range roads.depots {
		if x == d {
			return fleetNames[i%len(fleetNames)]
		}
	}
	return fleetNames[0]
}

var fleetNames = []string{"elbe-freight", "hanse-haulage", "nordkurier-logistik", "alster-cold-chain"}

var truckModels = []string{
	"MAN TGX 18.510", "Mercedes-Benz Actros 1845", "Scania R 450", "Volvo FH 460",
	"DAF XF 480", "Iveco S-Way 490", "Renault Trucks T 480",
}

var firstNames = []string{
	"Anna", "Ben", "Clara", "Deniz", "Elias", "Fatma", "Jonas", "Katrin", "Lukas",
	"Marta", "Nils", "Olga", "Paul", "Sven", "Tobias", "Yusuf", "Jan", "Heike",
}

var lastNames = []string{
	"Becker", "Fischer", "Hansen", "Jensen", "Koch", "Krueger", "Lange", "Meyer",
	"Nowak", "Peters", "Schmidt", "Schulz", "Wagner", "Weber", "Yilmaz", "Petersen",
}

// sensorZone is where a climate sensor hangs and what climate it keeps.
type sensorZone struct {
	name     string
	tempC    float64 // set point or typical temperature
	swing    float64 // daily swing, +/- degrees
	humidity float64 // typical relative humidity, percent
	doors    bool    // door openings cause warm excursions
}

var sensorZones = []sensorZone{
	{name: "freezer", tempC: -21, swing: 0.6, humidity: 70, doors: true},
	{name: "cold-room", tempC: 3.5, swing: 0.8, humidity: 85, doors: true},
	{name: "loading-dock", tempC: 11, swing: 4, humidity: 75},
	{name: "warehouse", tempC: 16, swing: 2.5, humidity: 55},
	{name: "office", tempC: 21.5, swing: 1.2, humidity: 42},
}

func zoneByName(name string) sensorZone {
	for _, z := range sensorZones {
		if z.name == name {
			return z
		}
	}
	return sensorZones[0]
}
