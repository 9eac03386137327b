package gateway

import (
	"fmt"
	"strings"
)

// Record formats a route can produce.
const (
	FormatEnvelope = "envelope" // JSON envelope with metadata, payload and ref
	FormatRaw      = "raw"      // the device's bytes unchanged; metadata in headers
)

// DefaultPartitions is the partition count of topics the gateway creates
// when a route does not say.
const DefaultPartitions = 3

// Route maps device topics to a Kafka topic and key. Match is a topic
// pattern of literal segments, named segments {name} (one segment, captured),
// + (one segment) and a final # (any remaining segments, captured as {rest}).
// Topic and Key are templates over the captured names plus {device},
// {stream} and {protocol} from the record.
type Route struct {
	// Match is the device topic (or CoAP path) pattern, e.g. devices/{device}/{stream}.
	Match string `yaml:"match"`
	// Topic is the Kafka topic template, e.g. iot.{stream}.
	Topic string `yaml:"topic"`
	// Key is the Kafka key template; default {device}, so records of a
	// device share a partition.
	Key string `yaml:"key"`
	// Format is envelope (default) or raw.
	Format string `yaml:"format"`
	// Partitions for topics this route creates; default 3.
	Partitions int `yaml:"partitions"`
	// ReplicationFactor for topics this route creates; default -1, the
	// broker's default.replication.factor.
	ReplicationFactor int `yaml:"replication_factor"`
	// MinInsyncReplicas sets min.insync.replicas on created topics; 0 leaves
	// the broker default.
	MinInsyncReplicas int `yaml:"min_insync_replicas"`
	// Config holds more topic configs for created topics, such as
	// retention.ms or max.message.bytes; default none.
	Config map[string]string `yaml:"config"`
}

// DefaultRoutes is the routing when the config has none.
func DefaultRoutes() []Route {
	return []Route{{Match: "devices/{device}/{stream}", Topic: "iot.{stream}", Key: "{device}"}}
}

// Routed is where one record goes.
type Routed struct {
	Topic  string
	Key    string
	Format string
	Spec   TopicSpec
}

// Router applies routes in order; the first match wins.
type Router struct {
	rules []rule
}

type rule struct {
	route   Route
	pattern []string
	topic   template
	key     template
	spec    TopicSpec // without Name: shared by every topic the rule gives
}

// NewRouter compiles routes. Errors name the route by its index, e.g.
// routes[1].topic, so check-config can point at it.
func NewRouter(routes []Route) (*Router, error) {
	if len(routes) == 0 {
		routes = DefaultRoutes()
	}
	r := &Router{}
	for i, rt := range routes {
		key := fmt.Sprintf("routes[%d]", i)
		if rt.Key == "" {
			rt.Key = "{device}"
		}
		if rt.Format == "" {
			rt.Format = FormatEnvelope
		}
		if rt.Partitions == 0 {
			rt.Partitions = DefaultPartitions
		}
		if rt.ReplicationFactor == 0 {
			rt.ReplicationFactor = -1
		}
		if rt.Format != FormatEnvelope && rt.Format != FormatRaw {
			return nil, fmt.Errorf("%s.format: %q is not envelope or raw", key, rt.Format)
		}
		if rt.Partitions < 0 {
			return nil, fmt.Errorf("%s.partitions: %d is negative", key, rt.Partitions)
		}
		if rt.ReplicationFactor < -1 {
			return nil, fmt.Errorf("%s.replication_factor: %d is neither positive nor -1 (the broker default)", key, rt.ReplicationFactor)
		}
		if rt.MinInsyncReplicas < 0 {
			return nil, fmt.Errorf("%s.min_insync_replicas: %d is negative", key, rt.MinInsyncReplicas)
		}
		if rt.ReplicationFactor > 0 && rt.MinInsyncReplicas > rt.ReplicationFactor {
			return nil, fmt.Errorf("%s.min_insync_replicas: %d is more than replication_factor %d, so no write could succeed", key, rt.MinInsyncReplicas, rt.ReplicationFactor)
		}
		for k := range rt.Config {
			if k == "" || strings.ContainsAny(k, " \t\n=") {
				return nil, fmt.Errorf("%s.config: %q is not a topic config name", key, k)
			}
		}
		spec := TopicSpec{Partitions: rt.Partitions, ReplicationFactor: rt.ReplicationFactor}
		if len(rt.Config) > 0 || rt.MinInsyncReplicas > 0 {
			spec.Config = map[string]string{}
			for k, v := range rt.Config {
				spec.Config[k] = v
			}
			if rt.MinInsyncReplicas > 0 {
				spec.Config["min.insync.replicas"] = fmt.Sprint(rt.MinInsyncReplicas)
			}
		}
		pat, names, err := compilePattern(rt.Match)
		if err != nil {
			return nil, fmt.Errorf("%s.match: %w", key, err)
		}
		names["device"], names["stream"], names["protocol"] = true, true, true
		tt, err := compileTemplate(rt.Topic, names)
		if err != nil {
			return nil, fmt.Errorf("%s.topic: %w", key, err)
		}
		if tt.static() {
			if err := ValidTopicName(rt.Topic); err != nil {
				return nil, fmt.Errorf("%s.topic: %w", key, err)
			}
		}
		kt, err := compileTemplate(rt.Key, names)
		if err != nil {
			return nil, fmt.Errorf("%s.key: %w", key, err)
		}
		r.rules = append(r.rules, rule{route: rt, pattern: pat, topic: tt, key: kt, spec: spec})
	}
	return r, nil
}

// Route finds where rec goes. It returns an error wrapping ErrNoRoute when no
// rule matches, and a descriptive error when the topic a template produced
// is not a valid Kafka topic name.
func (r *Router) Route(rec *Record) (Routed, error) {
	var vars [8]kv
	for i := range r.rules {
		ru := &r.rules[i]
		captured, ok := matchPattern(ru.pattern, rec.Topic, vars[:0])
		if !ok {
			continue
		}
		vs := routeVars{rec: rec, captured: captured}
		topic := ru.topic.expand(&vs)
		if err := ValidTopicName(topic); err != nil {
			return Routed{}, fmt.Errorf("route %q gives topic %q for %q: %w", ru.route.Match, topic, rec.Topic, err)
		}
		spec := ru.spec
		spec.Name = topic
		return Routed{Topic: topic, Key: ru.key.expand(&vs), Format: ru.route.Format, Spec: spec}, nil
	}
	return Routed{}, fmt.Errorf("%w: %q", ErrNoRoute, rec.Topic)
}

// StaticTopic is a Kafka topic whose name the config fixes: a route whose
// topic template has no variables.
type StaticTopic struct {
	Key  string // the config key that names it, e.g. routes[2].topic
	Spec TopicSpec
}

// StaticTopics lists the topics of routes with a fixed topic, each once, in
// route order: the topics the gateway can check or create before the first
// record arrives.
func (r *Router) StaticTopics() []StaticTopic {
	var out []StaticTopic
	seen := map[string]bool{}
	for i := range r.rules {
		ru := &r.rules[i]
		if !ru.topic.static() {
			continue
		}
		name := ru.topic.expand(nil)
		if seen[name] {
			continue
		}
		seen[name] = true
		spec := ru.spec
		spec.Name = name
		out = append(out, StaticTopic{Key: fmt.Sprintf("routes[%d].topic", i), Spec: spec})
	}
	return out
}

// ValidTopicName reports whether s is a legal Kafka topic name.
func ValidTopicName(s string) error {
	if s == "" || s == "." || s == ".." {
		return fmt.Errorf("invalid kafka topic name %q", s)
	}
	if len(s) > 249 {
		return fmt.Errorf("kafka topic name longer than 249 characters")
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("kafka topic name %q has %q: only letters, digits, '.', '_' and '-' are allowed", s, c)
		}
	}
	return nil
}

type kv struct{ k, v string }

// compilePattern splits a match pattern into segments. Named segments are
// kept as "{name}"; "#" is only allowed last.
func compilePattern(p string) ([]string, map[string]bool, error) {
	if p == "" {
		return nil, nil, fmt.Errorf("empty pattern")
	}
	segs := strings.Split(p, "/")
	names := map[string]bool{}
	for i, s := range segs {
		switch {
		case s == "#":
			if i != len(segs)-1 {
				return nil, nil, fmt.Errorf("%q: # must be the last segment", p)
			}
			names["rest"] = true
		case s == "+":
		case strings.HasPrefix(s, "{") && strings.HasSuffix(s, "}"):
			name := s[1 : len(s)-1]
			if !validName(name) {
				return nil, nil, fmt.Errorf("%q: bad segment name %q", p, name)
			}
			if names[name] {
				return nil, nil, fmt.Errorf("%q: segment name %q used twice", p, name)
			}
			names[name] = true
		case strings.ContainsAny(s, "{}+#"):
			return nil, nil, fmt.Errorf("%q: segment %q mixes a wildcard with text", p, s)
		}
	}
	return segs, names, nil
}

// matchPattern matches topic against pat (its segments) and appends the
// named segments it captured to out. It walks the topic without splitting
// it: Route runs for every record.
func matchPattern(pat []string, topic string, out []kv) ([]kv, bool) {
	rest, more := topic, true // more: a segment (maybe empty) is left
	for _, p := range pat {
		if p == "#" {
			// MQTT semantics: a/# also matches a itself.
			if !more {
				rest = ""
			}
			return append(out, kv{"rest", rest}), true
		}
		if !more {
			return nil, false
		}
		seg, tail, found := strings.Cut(rest, "/")
		rest, more = tail, found
		switch {
		case p == "+":
		case len(p) > 2 && p[0] == '{':
			if seg == "" {
				return nil, false
			}
			out = append(out, kv{p[1 : len(p)-1], seg})
		default:
			if p != seg {
				return nil, false
			}
		}
	}
	return out, !more
}

func validName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// template is literal text with {name} holes.
type template struct {
	parts []tpart
}

type tpart struct {
	lit  string
	name string
}

func compileTemplate(s string, names map[string]bool) (template, error) {
	var t template
	if s == "" {
		return t, fmt.Errorf("empty template")
	}
	for len(s) > 0 {
		i := strings.IndexByte(s, '{')
		if i < 0 {
			t.parts = append(t.parts, tpart{lit: s})
			break
		}
		if i > 0 {
			t.parts = append(t.parts, tpart{lit: s[:i]})
		}
		j := strings.IndexByte(s[i:], '}')
		if j < 0 {
			return t, fmt.Errorf("unclosed { in %q", s)
		}
		name := s[i+1 : i+j]
		if !names[name] {
			return t, fmt.Errorf("{%s} is not captured by match (have device, stream, protocol and the pattern's names)", name)
		}
		t.parts = append(t.parts, tpart{name: name})
		s = s[i+j+1:]
	}
	return t, nil
}

func (t template) static() bool {
	for _, p := range t.parts {
		if p.name != "" {
			return false
		}
	}
	return true
}

// routeVars are the values a route's templates can name: the captured
// segments of its match, then the record's device, protocol and stream.
type routeVars struct {
	rec      *Record
	captured []kv
}

func (v *routeVars) lookup(name string) string {
	if v == nil {
		return ""
	}
	switch name {
	case "device":
		return v.rec.Device
	case "protocol":
		return v.rec.Protocol
	}
	for _, c := range v.captured {
		if c.k == name {
			return c.v
		}
	}
	if name == "stream" {
		return v.rec.Stream
	}
	return ""
}

// expand fills the template in; nil vars leaves the variables empty. A
// template of one part costs no allocation, others one.
func (t template) expand(vars *routeVars) string {
	if len(t.parts) == 1 {
		if t.parts[0].name == "" {
			return t.parts[0].lit
		}
		return vars.lookup(t.parts[0].name)
	}
	n := 0
	for _, p := range t.parts {
		if p.name == "" {
			n += len(p.lit)
		} else {
			n += len(vars.lookup(p.name))
		}
	}
	var b strings.Builder
	b.Grow(n)
	for _, p := range t.parts {
		if p.name == "" {
			b.WriteString(p.lit)
		} else {
			b.WriteString(vars.lookup(p.name))
		}
	}
	return b.String()
}
