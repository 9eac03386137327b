package app

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/iotgw/iotgw/buffer"
	"github.com/iotgw/iotgw/devices"
	"github.com/iotgw/iotgw/enrich"
	"github.com/iotgw/iotgw/gateway"
	"github.com/iotgw/iotgw/protocols/coap"
	"github.com/iotgw/iotgw/protocols/mqtt"
)

// Config is the whole gateway configuration: one YAML file, each section
// owned by the package it configures. Every leaf can be overridden by an
// environment variable IOTGW_<SECTION>_<KEY>.
type Config struct {
	Gateway GatewayOptions        `yaml:"gateway"`
	Log     LogOptions            `yaml:"log"`
	MQTT    mqtt.Options          `yaml:"mqtt"`
	CoAP    coap.Options          `yaml:"coap"`
	HTTP    HTTPOptions           `yaml:"http"`
	Auth    devices.Options       `yaml:"auth"`
	Buffer  buffer.Options        `yaml:"buffer"`
	Kafka   gateway.KafkaOptions  `yaml:"kafka"`
	Egress  gateway.EgressOptions `yaml:"egress"`
	// Downlink sends commands from Kafka (iot.commands) to devices.
	Downlink gateway.DownlinkOptions `yaml:"downlink"`
	Enrich   enrich.Options          `yaml:"enrich"`
	Routes   []gateway.Route         `yaml:"routes"`
}

// GatewayOptions identify this instance.
type GatewayOptions struct {
	// ID names this gateway in the iotgw-gateway header; default the host name.
	ID string `yaml:"id"`
}

// LogOptions configure logging.
type LogOptions struct {
	// Level is debug, info, warn or error; default info.
	Level string `yaml:"level"`
	// Format is text or json; default text.
	Format string `yaml:"format"`
}

// HTTPOptions configure the admin HTTP server.
type HTTPOptions struct {
	// Listen is the admin address (metrics, health, status); default
	// :8080, "off" disables it. Bind it to 127.0.0.1 or a management
	// network: it shows device ids and counters (never secrets).
	Listen string `yaml:"listen"`
	// Token, when set, requires "Authorization: Bearer TOKEN" on everything
	// but /healthz and /readyz. Prefer IOTGW_HTTP_TOKEN to the file.
	Token string `yaml:"token"`
	// Pprof serves Go's profiler under /debug/pprof/; default off.
	Pprof bool `yaml:"pprof"`
}

// SetDefaults fills every unset field of every section.
func (c *Config) SetDefaults() {
	if c.Gateway.ID == "" {
		c.Gateway.ID, _ = os.Hostname()
		if c.Gateway.ID == "" {
			c.Gateway.ID = "iotgw"
		}
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Log.Format == "" {
		c.Log.Format = "text"
	}
	if c.HTTP.Listen == "" {
		c.HTTP.Listen = ":8080"
	}
	c.MQTT.SetDefaults()
	c.CoAP.SetDefaults()
	c.Auth.SetDefaults()
	// The registry file and the enrichment snapshot live beside the buffer
	// unless the config puts them elsewhere.
	if c.Auth.Backend == devices.BackendFile && c.Auth.File == "" && c.Buffer.Dir != "" {
		c.Auth.File = filepath.Join(c.Buffer.Dir, "devices.yaml")
	}
	if c.Enrich.Snapshot.Dir == "" && c.Buffer.Dir != "" {
		c.Enrich.Snapshot.Dir = filepath.Join(c.Buffer.Dir, "enrich")
	}
	c.Buffer.SetDefaults()
	c.Kafka.SetDefaults()
	c.Egress.SetDefaults()
	c.Downlink.SetDefaults(c.Gateway.ID)
	c.Enrich.SetDefaults()
}

// Validate checks every section and returns all problems, each naming its
// key, joined.
func (c *Config) Validate() error {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		add(fmt.Errorf("log.level: %q is not debug, info, warn or error", c.Log.Level))
	}
	if c.Log.Format != "text" && c.Log.Format != "json" {
		add(fmt.Errorf("log.format: %q is not text or json", c.Log.Format))
	}
	if c.HTTP.Listen != "off" {
		if _, _, err := net.SplitHostPort(c.HTTP.Listen); err != nil {
			add(fmt.Errorf("http.listen: %q is not a listen address like :8080 (or off)", c.HTTP.Listen))
		}
	}
	add(c.MQTT.Validate())
	add(c.CoAP.Validate())
	add(c.Auth.Validate())
	add(c.Buffer.Validate())
	add(c.Kafka.Validate())
	add(c.Egress.Validate())
	add(c.Downlink.Validate())
	add(c.Enrich.Validate())
	if _, err := gateway.NewRouter(c.Routes); err != nil {
		add(err)
	}
	return errors.Join(errs...)
}

// Environ turns os.Environ into a map for Load.
func Environ() map[string]string {
	m := map[string]string{}
	for _, kv := range os.Environ() {
		if k, v, ok := strings.Cut(kv, "="); ok && strings.HasPrefix(k, EnvPrefix) {
			m[k] = v
		}
	}
	return m
}

// LoadFile reads a config file (path "" means no file), applies env
// overrides, fills defaults and validates.
func LoadFile(path string, env map[string]string) (*Config, error) {
	return loadFile(path, env, true)
}

// LoadForTool is LoadFile without validating the whole config: commands
// such as `iotgw devices` need only their own section (which they
// validate) and must work on a machine without Kafka settings.
func LoadForTool(path string, env map[string]string) (*Config, error) {
	return loadFile(path, env, false)
}

func loadFile(path string, env map[string]string, validate bool) (*Config, error) {
	var data []byte
	if path != "" {
		var err error
		data, err = os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read config: %w", err)
		}
	}
	cfg := &Config{Enrich: enrich.DefaultOptions()}
	if !validate {
		return cfg, decodeInto(cfg, data, path, env)
	}
	return loadInto(cfg, bytes.NewReader(data), path, env)
}

// Load parses YAML from r (named name in errors), rejects unknown keys,
// applies env overrides, fills defaults and validates.
func Load(r io.Reader, name string, env map[string]string) (*Config, error) {
	return loadInto(&Config{Enrich: enrich.DefaultOptions()}, r, name, env)
}

// loadInto is Load over a config that already holds some values (the dev
// defaults); the file and the environment override them.
func loadInto(cfg *Config, r io.Reader, name string, env map[string]string) (*Config, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("read config %s: %w", name, err)
	}
	if err := decodeInto(cfg, data, name, env); err != nil {
		return nil, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("config %s:\n  %s", displayName(name), strings.ReplaceAll(err.Error(), "\n", "\n  "))
	}
	return cfg, nil
}

// decodeInto parses YAML over cfg, rejects unknown keys, applies env
// overrides and fills defaults.
func decodeInto(cfg *Config, data []byte, name string, env map[string]string) error {
	if len(bytes.TrimSpace(data)) > 0 {
		var doc yaml.Node
		if err := yaml.Unmarshal(data, &doc); err != nil {
			return fmt.Errorf("config %s: %w", name, cleanYAMLError(err))
		}
		if len(doc.Content) > 0 && doc.Content[0].Kind != yaml.MappingNode {
			return fmt.Errorf("config %s: the top level must be a mapping of sections (gateway, mqtt, kafka, ...)", name)
		}
		if bad := checkKeys(&doc, reflect.TypeOf(cfg).Elem(), ""); len(bad) > 0 {
			return fmt.Errorf("config %s:\n  %s", name, strings.Join(bad, "\n  "))
		}
		if err := doc.Decode(cfg); err != nil {
			return fmt.Errorf("config %s: %w", name, cleanYAMLError(err))
		}
	}
	if err := applyEnv(cfg, env); err != nil {
		return fmt.Errorf("environment: %w", err)
	}
	cfg.SetDefaults()
	return nil
}

func displayName(name string) string {
	if name == "" {
		return "(defaults and environment)"
	}
	return name
}

// cleanYAMLError drops yaml.v3's Go type names, which mean nothing to an
// operator.
func cleanYAMLError(err error) error {
	msg := err.Error()
	msg = strings.ReplaceAll(msg, "yaml: ", "")
	return errors.New(msg)
}

// EnvNames lists every environment override with the key it sets, for
// docs and `iotgw check-config --env`.
func EnvNames() []string {
	var out []string
	for _, k := range envKeys(reflect.TypeOf(Config{})) {
		out = append(out, k.Name+"\t"+k.Path)
	}
	return out
}
