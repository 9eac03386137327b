package devices

import (
	"fmt"
	"strings"
)

// DevicePlaceholder is replaced by the authenticated device id in ACL
// patterns.
const DevicePlaceholder = "{device}"

// Default ACL patterns: a device publishes anywhere under its own topic tree
// and subscribes only to its own commands.
var (
	DefaultPublishACL   = []string{"devices/{device}/#"}
	DefaultSubscribeACL = []string{"devices/{device}/commands", "devices/{device}/commands/#"}
)

// maxTopicLen is MQTT's limit on a topic name or filter, in bytes.
const maxTopicLen = 65535

// ACL decides which topics an authenticated device may publish to and which
// topic filters it may subscribe to. Patterns are MQTT topic filters in which
// {device} stands for the device's own id; '+' matches one level and '#' any
// number of levels, including none ("a/#" matches "a"). Because ValidID
// forbids '/', '+' and '#', substituting an id can never widen a pattern.
//
// An ACL is immutable and safe for concurrent use.
type ACL struct {
	publish   []pattern
	subscribe []pattern
}

type levelKind uint8

const (
	levelLiteral  levelKind = iota // matched exactly
	levelTemplate                  // contains {device}; matched after substitution
	levelPlus                      // '+'
	levelHash                      // '#', always the last level
)

type level struct {
	kind levelKind
	text string
}

type pattern []level

func (l level) expand(device string) string {
	if l.kind == levelTemplate {
		return strings.ReplaceAll(l.text, DevicePlaceholder, device)
	}
	return l.text
}

// NewACL compiles publish and subscribe patterns. An empty list allows
// nothing; pass DefaultPublishACL and DefaultSubscribeACL for the defaults.
// A pattern must be a valid MQTT topic filter, and the only placeholder is
// {device}: other braces are refused so that a typo such as {device_id}
// fails at start-up instead of matching nothing.
func NewACL(publish, subscribe []string) (*ACL, error) {
	a := &ACL{}
	var err error
	if a.publish, err = compilePatterns("publish", publish); err != nil {
		return nil, err
	}
	if a.subscribe, err = compilePatterns("subscribe", subscribe); err != nil {
		return nil, err
	}
	return a, nil
}

func compilePatterns(name string, src []string) ([]pattern, error) {
	out := make([]pattern, 0, len(src))
	for i, s := range src {
		p, err := compilePattern(s)
		if err != nil {
			return nil, fmt.Errorf("%s[%d] %q: %w", name, i, s, err)
		}
		out = append(out, p)
	}
	return out, nil
}

func compilePattern(s string) (pattern, error) {
	if err := checkFilter(s); err != nil {
		return nil, err
	}
	if strings.ContainsAny(strings.ReplaceAll(s, DevicePlaceholder, ""), "{}") {
		return nil, fmt.Errorf("unknown placeholder: only %s is replaced", DevicePlaceholder)
	}
	var p pattern
	for _, l := range strings.Split(s, "/") {
		switch {
		case l == "+":
			p = append(p, level{kind: levelPlus})
		case l == "#":
			p = append(p, level{kind: levelHash})
		case strings.Contains(l, DevicePlaceholder):
			p = append(p, level{kind: levelTemplate, text: l})
		default:
			p = append(p, level{kind: levelLiteral, text: l})
		}
	}
	return p, nil
}

// checkFilter reports whether s is a valid MQTT topic filter.
func checkFilter(s string) error {
	switch {
	case s == "":
		return fmt.Errorf("empty")
	case len(s) > maxTopicLen:
		return fmt.Errorf("longer than %d bytes", maxTopicLen)
	case strings.IndexByte(s, 0) >= 0:
		return fmt.Errorf("contains NUL")
	}
	levels := strings.Split(s, "/")
	for i, l := range levels {
		if l == "#" && i != len(levels)-1 || l != "#" && strings.Contains(l, "#") {
			return fmt.Errorf("'#' must be the whole last level")
		}
		if l != "+" && strings.Contains(l, "+") {
			return fmt.Errorf("'+' must be a whole level")
		}
	}
	return nil
}

// validTopicName reports whether s is a topic a client may publish to.
func validTopicName(s string) bool {
	return s != "" && len(s) <= maxTopicLen && !strings.ContainsAny(s, "+#\x00")
}

// CanPublish reports whether device may publish to topic. It is false for an
// invalid device id and for a topic that is not a valid MQTT topic name.
func (a *ACL) CanPublish(device, topic string) bool {
	if ValidID(device) != nil || !validTopicName(topic) {
		return false
	}
	levels := strings.Split(topic, "/")
	for _, p := range a.publish {
		if p.matches(levels, device) {
			return true
		}
	}
	return false
}

// matches reports whether topic (split into levels) matches p. As MQTT
// requires, a pattern starting with a wildcard does not match a topic
// starting with '$'.
func (p pattern) matches(topic []string, device string) bool {
	for i, l := range p {
		if i == 0 && l.kind >= levelPlus && strings.HasPrefix(topic[0], "$") {
			return false
		}
		switch l.kind {
		case levelHash:
			return true
		case levelPlus:
			if i >= len(topic) {
				return false
			}
		default:
			if i >= len(topic) || topic[i] != l.expand(device) {
				return false
			}
		}
	}
	return len(topic) == len(p)
}

// CanSubscribe reports whether device may subscribe to filter: only if every
// topic the filter could match is allowed by the subscribe patterns taken
// together. So with the defaults truck-1 may subscribe to
// devices/truck-1/commands/# or devices/truck-1/commands/+, but not to
// devices/+/commands, devices/truck-1/#, or #. A shared subscription
// ($share/{group}/{filter}) is judged by its filter. It is false for an
// invalid device id and an invalid filter.
func (a *ACL) CanSubscribe(device, filter string) bool {
	if ValidID(device) != nil {
		return false
	}
	if rest, ok := strings.CutPrefix(filter, "$share/"); ok {
		group, inner, found := strings.Cut(rest, "/")
		if !found || group == "" || strings.ContainsAny(group, "+#") {
			return false
		}
		filter = inner
	}
	if checkFilter(filter) != nil {
		return false
	}
	return covered(strings.Split(filter, "/"), 0, a.subscribe, device)
}

// covered reports whether the patterns in alive, all of which matched the
// filter's levels before i, together match every topic that filter f
// matches from level i on.
//
// A filter wildcard level stands for every possible value. A pattern literal
// covers only one value, so for a wildcard only wildcard patterns stay alive:
// the value that no literal names is the one that must still be covered, and
// literal values are covered by a superset of those patterns. A filter '#'
// at level i matches a topic ending before i (if i > 0) plus "+/#", which is
// how it is expanded; each step drops patterns that are too short, so the
// recursion ends.
func covered(f []string, i int, alive []pattern, device string) bool {
	if i == len(f) {
		return endsCovered(alive, i)
	}
	fl := f[i]
	wild := fl == "+" || fl == "#"
	var next []pattern
	for _, p := range alive {
		if i >= len(p) {
			continue
		}
		l := p[i]
		if i == 0 && l.kind >= levelPlus && !wild && strings.HasPrefix(fl, "$") {
			continue
		}
		switch l.kind {
		case levelHash:
			return true
		case levelPlus:
			next = append(next, p)
		default:
			if !wild && fl == l.expand(device) {
				next = append(next, p)
			}
		}
	}
	if fl == "#" {
		if i > 0 && !endsCovered(alive, i) {
			return false
		}
		expanded := append(append(f[:i:i], "+"), "#")
		return covered(expanded, i+1, next, device)
	}
	return covered(f, i+1, next, device)
}

// endsCovered reports whether a pattern in alive matches a topic that ends
// after level i-1: the pattern ends there too, or continues with '#'.
func endsCovered(alive []pattern, i int) bool {
	for _, p := range alive {
		if len(p) == i || len(p) == i+1 && p[i].kind == levelHash {
			return true
		}
	}
	return false
}
