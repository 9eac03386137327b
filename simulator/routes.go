package simulator

import (
	"bufio"
	_ "embed"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

// builtinRoutes are real motorways around Hamburg; see the file's header
// for the format.
//
//go:embed routes.txt
var builtinRoutes string

// maxRouteLine bounds one line of route data; longer lines are an error.
const maxRouteLine = 4096

// depot is a home base of trucks and a site of sensors.
type depot struct {
	id, name string
	lat, lon float64
}

// waypoint is one point of a route polyline.
type waypoint struct {
	lat, lon float64
	limit    float64       // km/h on the segment that starts here
	stop     time.Duration // halt here for about this long; 0 drives through
	place    string
}

// route is a polyline a truck drives out and back.
type route struct {
	id, name string
	depot    *depot
	points   []waypoint
	cum      []float64 // metres from the first point to point i
	// The compass heading on segment i (from point i to i+1) driving
	// outbound and back: locate runs for every message, bearing is trig.
	outbound, inbound []float64
}

// length is the route's length in metres.
func (r *route) length() float64 { return r.cum[len(r.cum)-1] }

// roadNetwork is the parsed route data.
type roadNetwork struct {
	depots []*depot
	routes []*route
}

// loadRoutes parses the routes file named in the options, or the built-in
// data.
func loadRoutes(file string) (*roadNetwork, error) {
	if file == "" {
		return parseRoutes(strings.NewReader(builtinRoutes))
	}
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("routes_file: %w", err)
	}
	defer f.Close()
	n, err := parseRoutes(f)
	if err != nil {
		return nil, fmt.Errorf("routes_file %s: %w", file, err)
	}
	return n, nil
}

// parseRoutes reads route data: depot lines, route lines, and the points of
// the route above them. Errors wrap ErrRouteData and name the line.
func parseRoutes(r io.Reader) (*roadNetwork, error) {
	roads := &roadNetwork{}
	depots := map[string]*depot{}
	var cur *route
	finish := func(line int) error {
		if cur == nil {
			return nil
		}
		if len(cur.points) < 2 {
			return fmt.Errorf("%w: line %d: route %s needs at least 2 points", ErrRouteData, line, cur.id)
		}
		n := len(cur.points)
		cur.cum = make([]float64, n)
		cur.outbound, cur.inbound = make([]float64, n-1), make([]float64, n-1)
		for i := 1; i < n; i++ {
			a, b := cur.points[i-1], cur.points[i]
			cur.cum[i] = cur.cum[i-1] + haversine(a.lat, a.lon, b.lat, b.lon)
			cur.outbound[i-1] = bearing(a.lat, a.lon, b.lat, b.lon)
			cur.inbound[i-1] = bearing(b.lat, b.lon, a.lat, a.lon)
		}
		if cur.length() < 100 {
			return fmt.Errorf("%w: line %d: route %s is shorter than 100 m", ErrRouteData, line, cur.id)
		}
		roads.routes = append(roads.routes, cur)
		cur = nil
		return nil
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 1024), maxRouteLine)
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		f := strings.Fields(text)
		bad := func(format string, args ...any) error {
			return fmt.Errorf("%w: line %d: %s", ErrRouteData, line, fmt.Sprintf(format, args...))
		}
		switch f[0] {
		case "depot":
			if len(f) < 5 {
				return nil, bad("want: depot <id> <lat> <lon> <name>")
			}
			lat, lon, err := parseLatLon(f[2], f[3])
			if err != nil {
				return nil, bad("%v", err)
			}
			if depots[f[1]] != nil {
				return nil, bad("depot %s defined twice", f[1])
			}
			d := &depot{id: f[1], name: strings.Join(f[4:], " "), lat: lat, lon: lon}
			depots[d.id] = d
			roads.depots = append(roads.depots, d)
		case "route":
			if err := finish(line); err != nil {
				return nil, err
			}
			if len(f) < 4 {
				return nil, bad("want: route <id> <depot-id> <name>")
			}
			d := depots[f[2]]
			if d == nil {
				return nil, bad("route %s: unknown depot %q (define it above)", f[1], f[2])
			}
			for _, r := range roads.routes {
				if r.id == f[1] {
					return nil, bad("route %s defined twice", f[1])
				}
			}
			cur = &route{id: f[1], depot: d, name: strings.Join(f[3:], " ")}
		default:
			if cur == nil {
				return nil, bad("point before the first route line")
			}
			if len(f) < 3 {
				return nil, bad("want: <lat> <lon> <limit-km/h> [stop=<duration>] [place]")
			}
			lat, lon, err := parseLatLon(f[0], f[1])
			if err != nil {
				return nil, bad("%v", err)
			}
			limit, err := strconv.ParseFloat(f[2], 64)
			if err != nil || !(limit >= 5 && limit <= 200) {
				return nil, bad("speed limit %q: want km/h between 5 and 200", f[2])
			}
			p := waypoint{lat: lat, lon: lon, limit: limit}
			rest := f[3:]
			if len(rest) > 0 && strings.HasPrefix(rest[0], "stop=") {
				d, err := time.ParseDuration(strings.TrimPrefix(rest[0], "stop="))
				if err != nil || d < 0 || d > 24*time.Hour {
					return nil, bad("%s: want a duration up to 24h such as stop=30m", rest[0])
				}
				p.stop = d
				rest = rest[1:]
			}
			p.place = strings.Join(rest, " ")
			cur.points = append(cur.points, p)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w: line %d: %v", ErrRouteData, line+1, err)
	}
	if err := finish(line); err != nil {
		return nil, err
	}
	if len(roads.routes) == 0 {
		return nil, fmt.Errorf("%w: no routes", ErrRouteData)
	}
	return roads, nil
}

func parseLatLon(a, b string) (lat, lon float64, err error) {
	lat, err1 := strconv.ParseFloat(a, 64)
	lon, err2 := strconv.ParseFloat(b, 64)
	if err1 != nil || err2 != nil || !(lat >= -90 && lat <= 90) || !(lon >= -180 && lon <= 180) {
		return 0, 0, fmt.Errorf("coordinates %q %q: want latitude -90..90 and longitude -180..180 in degrees", a, b)
	}
	return lat, lon, nil
}

const earthRadius = 6371008.8 // metres, mean

// haversine is the great-circle distance in metres.
func haversine(lat1, lon1, lat2, lon2 float64) float64 {
	p1, p2 := lat1*math.Pi/180, lat2*math.Pi/180
	dp, dl := p2-p1, (lon2-lon1)*math.Pi/180
	h := math.Sin(dp/2)*math.Sin(dp/2) + math.Cos(p1)*math.Cos(p2)*math.Sin(dl/2)*math.Sin(dl/2)
	return 2 * earthRadius * math.Asin(math.Min(1, math.Sqrt(h)))
}

// bearing is the initial compass heading in degrees (0 = north, 90 = east)
// from the first point to the second.
func bearing(lat1, lon1, lat2, lon2 float64) float64 {
	p1, p2 := lat1*math.Pi/180, lat2*math.Pi/180
	dl := (lon2 - lon1) * math.Pi / 180
	y := math.Sin(dl) * math.Cos(p2)
	x := math.Cos(p1)*math.Sin(p2) - math.Sin(p1)*math.Cos(p2)*math.Cos(dl)
	deg := math.Atan2(y, x) * 180 / math.Pi
	return math.Mod(deg+360, 360)
}

// segmentAt returns the index i of the segment [cum[i], cum[i+1]] that
// contains the distance d (clamped to the route).
func (r *route) segmentAt(d float64) int {
	lo, hi := 0, len(r.cum)-2
	for lo < hi {
		mid := (lo + hi + 1) / 2
		if r.cum[mid] <= d {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	return lo
}

// segmentNear is segmentAt(d) for a d that is likely on segment i: it
// checks i before it searches.
func (r *route) segmentNear(i int, d float64) int {
	last := len(r.cum) - 2
	if i >= 0 && i <= last && r.cum[i] <= d && (i == last || d < r.cum[i+1]) {
		return i // the largest i with cum[i] <= d, as segmentAt finds
	}
	return r.segmentAt(d)
}

// searchNear is sort.SearchFloat64s(a, x), for a sorted and an x whose
// answer is likely i: it checks i before it searches.
func searchNear(a []float64, x float64, i int) int {
	if i >= 0 && i <= len(a) && (i == 0 || a[i-1] < x) && (i == len(a) || a[i] >= x) {
		return i // the smallest i with a[i] >= x, as the search finds
	}
	return sort.SearchFloat64s(a, x)
}

// locate returns the position at distance d from the first point and the
// heading when driving in direction dir (+1 outbound, -1 back), and the
// segment it is on. near is the segment to check first (see segmentNear),
// -1 for none.
func (r *route) locate(d float64, dir, near int) (i int, lat, lon, heading float64) {
	i = r.segmentNear(near, d)
	a, b := r.points[i], r.points[i+1]
	seg := r.cum[i+1] - r.cum[i]
	f := 0.0
	if seg > 0 {
		f = math.Max(0, math.Min(1, (d-r.cum[i])/seg))
	}
	lat = a.lat + (b.lat-a.lat)*f
	lon = a.lon + (b.lon-a.lon)*f
	heading = r.outbound[i]
	if dir < 0 {
		heading = r.inbound[i]
	}
	return i, lat, lon, heading
}
