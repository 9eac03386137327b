package app

import (
	"encoding"
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// EnvPrefix starts every environment override: IOTGW_<SECTION>_<KEY>, with
// nested keys joined by underscores (enrich.redis.addr is
// IOTGW_ENRICH_REDIS_ADDR). Lists take comma-separated values.
const EnvPrefix = "IOTGW_"

var (
	durationType  = reflect.TypeOf(time.Duration(0))
	unmarshalText = reflect.TypeOf((*encoding.TextUnmarshaler)(nil)).Elem()
)

// envKey describes one overridable leaf of the config.
type envKey struct {
	Name string // IOTGW_KAFKA_BROKERS
	Path string // kafka.brokers
	idx  []int
}

// envKeys lists the overridable leaves of a config struct type.
func envKeys(t reflect.Type) []envKey {
	var out []envKey
	var walk func(t reflect.Type, path []string, idx []int)
	walk = func(t reflect.Type, path []string, idx []int) {
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			name := yamlName(f)
			if name == "" {
				continue
			}
			p := append(append([]string(nil), path...), name)
			ix := append(append([]int(nil), idx...), i)
			ft := f.Type
			if ft.Kind() == reflect.Pointer && ft.Elem().Kind() != reflect.Struct {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct && ft != durationType && !reflect.PointerTo(ft).Implements(unmarshalText) {
				walk(ft, p, ix)
				continue
			}
			if !settable(ft) {
				continue
			}
			out = append(out, envKey{
				Name: EnvPrefix + strings.ToUpper(strings.Join(p, "_")),
				Path: strings.Join(p, "."),
				idx:  ix,
			})
		}
	}
	walk(t, nil, nil)
	return out
}

func yamlName(f reflect.StructField) string {
	if !f.IsExported() {
		return ""
	}
	tag := f.Tag.Get("yaml")
	name, _, _ := strings.Cut(tag, ",")
	if name == "-" {
		return ""
	}
	if name == "" {
		return strings.ToLower(f.Name)
	}
	return name
}

func settable(t reflect.Type) bool {
	if reflect.PointerTo(t).Implements(unmarshalText) {
		return true
	}
	switch t.Kind() {
	case reflect.String, reflect.Bool, reflect.Int, reflect.Int64, reflect.Int32, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Float64:
		return true
	case reflect.Slice:
		return t.Elem().Kind() == reflect.String
	}
	return false
}

// applyEnv sets every field that has an environment variable in env.
func applyEnv(cfg any, env map[string]string) error {
	v := reflect.ValueOf(cfg).Elem()
	for _, k := range envKeys(v.Type()) {
		raw, ok := env[k.Name]
		if !ok {
			continue
		}
		f := v
		for _, i := range k.idx {
			if f.Kind() == reflect.Pointer {
				if f.IsNil() {
					f.Set(reflect.New(f.Type().Elem()))
				}
				f = f.Elem()
			}
			f = f.Field(i)
		}
		if f.Kind() == reflect.Pointer {
			if f.IsNil() {
				f.Set(reflect.New(f.Type().Elem()))
			}
			f = f.Elem()
		}
		if err := setFromString(f, raw); err != nil {
			return fmt.Errorf("%s (from %s=%q): %w", k.Path, k.Name, raw, err)
		}
	}
	return nil
}

func setFromString(f reflect.Value, raw string) error {
	if f.CanAddr() {
		if u, ok := f.Addr().Interface().(encoding.TextUnmarshaler); ok {
			return u.UnmarshalText([]byte(raw))
		}
	}
	if f.Type() == durationType {
		d, err := time.ParseDuration(raw)
		if err != nil {
			return fmt.Errorf("not a duration like 5s or 250ms")
		}
		f.SetInt(int64(d))
		return nil
	}
	switch f.Kind() {
	case reflect.String:
		f.SetString(raw)
	case reflect.Bool:
		b, err := strconv.ParseBool(raw)
		if err != nil {
			return fmt.Errorf("not true or false")
		}
		f.SetBool(b)
	case reflect.Int, reflect.Int64, reflect.Int32:
		n, err := strconv.ParseInt(raw, 10, f.Type().Bits())
		if err != nil {
			return fmt.Errorf("not an integer")
		}
		f.SetInt(n)
	case reflect.Uint16, reflect.Uint32, reflect.Uint64:
		n, err := strconv.ParseUint(raw, 10, f.Type().Bits())
		if err != nil {
			return fmt.Errorf("not a non-negative integer")
		}
		f.SetUint(n)
	case reflect.Float64:
		n, err := strconv.ParseFloat(raw, 64)
		if err != nil {
			return fmt.Errorf("not a number")
		}
		f.SetFloat(n)
	case reflect.Slice:
		var items []string
		for _, s := range strings.Split(raw, ",") {
			if s = strings.TrimSpace(s); s != "" {
				items = append(items, s)
			}
		}
		f.Set(reflect.ValueOf(items))
	default:
		return fmt.Errorf("cannot be set from the environment")
	}
	return nil
}

// checkKeys walks a YAML document against the config type and reports every
// key the type does not have, by its dotted path and line.
func checkKeys(n *yaml.Node, t reflect.Type, path string) []string {
	if n.Kind == yaml.DocumentNode {
		if len(n.Content) == 0 {
			return nil
		}
		n = n.Content[0]
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t.Kind() == reflect.Struct && t != durationType && !reflect.PointerTo(t).Implements(unmarshalText) && n.Kind == yaml.MappingNode:
		fields := map[string]reflect.Type{}
		for i := 0; i < t.NumField(); i++ {
			if name := yamlName(t.Field(i)); name != "" {
				fields[name] = t.Field(i).Type
			}
		}
		var errs []string
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i].Value
			ft, ok := fields[k]
			full := k
			if path != "" {
				full = path + "." + k
			}
			if !ok {
				errs = append(errs, fmt.Sprintf("%s: unknown key (line %d); known keys here: %s", full, n.Content[i].Line, strings.Join(sortedKeys(fields), ", ")))
				continue
			}
			errs = append(errs, checkKeys(n.Content[i+1], ft, full)...)
		}
		return errs
	case t.Kind() == reflect.Slice && n.Kind == yaml.SequenceNode:
		var errs []string
		for i, c := range n.Content {
			errs = append(errs, checkKeys(c, t.Elem(), fmt.Sprintf("%s[%d]", path, i))...)
		}
		return errs
	}
	return nil
}

func sortedKeys(m map[string]reflect.Type) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
