package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/iotgw/iotgw/devices"
	"github.com/iotgw/iotgw/enrich"
	"github.com/iotgw/iotgw/gateway/app"
	"github.com/iotgw/iotgw/simulator"
)

func simulateCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("simulate", "simulate [flags]", stderr)
	var o simulator.Options
	fs.StringVar(&o.Broker, "broker", "127.0.0.1:1883", "MQTT address of the gateway (trucks)")
	fs.StringVar(&o.CoAP, "coap", "127.0.0.1:5683", "CoAP address of the gateway (sensors)")
	fs.IntVar(&o.Trucks, "trucks", 10, "number of trucks (MQTT devices truck-0001...)")
	fs.IntVar(&o.Sensors, "sensors", 0, "number of climate sensors (CoAP devices sensor-0001...)")
	fs.Float64Var(&o.Rate, "rate", 1, "messages per second per device; 0 = as fast as acks allow (load test)")
	fs.DurationVar(&o.Duration, "duration", 0, "stop after this long (0: until --messages or Ctrl-C)")
	fs.IntVar(&o.Messages, "messages", 0, "messages per device, then stop (0: no limit)")
	qos := fs.Int("qos", 1, "MQTT QoS: 0, 1 or 2")
	fs.StringVar(&o.Protocol, "protocol", "5", "MQTT version: 3.1.1 or 5")
	fs.IntVar(&o.InFlight, "inflight", 0, "unacknowledged messages per connection (default 100 for --rate 0, else 10)")
	fs.DurationVar(&o.RampUp, "ramp-up", 0, "spread device connects over this long")
	fs.Float64Var(&o.Jitter, "jitter", 0.1, "random spread of message intervals, 0..1")
	fs.Int64Var(&o.Seed, "seed", 1, "seed for routes, reference data and values")
	fs.IntVar(&o.FirstDevice, "first-device", 1, "number of the first device, for several simulators on one gateway")
	fs.StringVar(&o.Password, "password", "", "MQTT password pattern, {device} is replaced by the id (registry auth)")
	fs.BoolVar(&o.TLS, "tls", false, "connect to MQTT over TLS")
	fs.StringVar(&o.CAFile, "ca-file", "", "CA certificates (PEM) for --tls")
	fs.BoolVar(&o.Insecure, "insecure", false, "skip TLS certificate verification (test setups only)")
	fs.StringVar(&o.CoAPType, "coap-type", "con", "CoAP message type: con or non")
	fs.StringVar(&o.CoAPPSK, "coap-psk", "", "DTLS pre-shared key pattern for sensors ({device} replaced); empty = plain UDP")
	verify := fs.String("verify", "", "afterwards, read these Kafka brokers (comma-separated) and check every acked message arrived, in order")
	provision := fs.Bool("provision", false, "first register the devices (--config auth section) and load their reference data (--config enrich.redis)")
	configPath := fs.String("config", "", "gateway config, for --provision")
	quiet := fs.Bool("quiet", false, "no progress line")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	o.QoS = simulator.QoS(*qos)
	if !*quiet {
		o.Progress = stderr
	}
	o.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if *provision {
		if err := provisionFleet(ctx, o, *configPath, stdout); err != nil {
			return fmt.Errorf("provision: %w", err)
		}
	}
	rep, err := simulator.Run(ctx, o)
	if err != nil {
		return err
	}
	rep.Print(stdout)
	if *verify == "" {
		return nil
	}
	fmt.Fprintln(stdout, "\nverifying against Kafka", *verify, "...")
	res, err := simulator.Verify(context.Background(), simulator.VerifyOptions{Brokers: strings.Split(*verify, ","), Report: rep})
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	res.Print(stdout)
	if !res.OK() {
		return errors.New("verification failed: see the problems above")
	}
	return nil
}

// provisionFleet registers the simulated devices in the gateway's registry
// and writes their reference data to Redis, so that registry auth accepts
// them and enrichment has something to add.
func provisionFleet(ctx context.Context, o simulator.Options, configPath string, stdout io.Writer) error {
	if configPath == "" {
		return errors.New("--provision needs --config (the gateway's config: auth and enrich sections)")
	}
	cfg, err := app.LoadForTool(configPath, app.Environ())
	if err != nil {
		return err
	}
	fleet, err := simulator.Fleet(o)
	if err != nil {
		return err
	}
	if err := cfg.Auth.Validate(); err != nil {
		return err
	}
	auth := cfg.Auth
	auth.Mode = devices.ModeRegistry
	reg, err := devices.Open(ctx, auth, nil)
	if err != nil {
		return err
	}
	defer reg.Close()
	entries := make([]devices.Entry, 0, len(fleet))
	for _, d := range fleet {
		e := devices.Entry{Device: devices.Device{ID: d.ID, Meta: map[string]string{"kind": d.Kind, "fleet": d.Fleet}}}
		switch {
		case d.Protocol == simulator.ProtocolCoAP && o.CoAPPSK != "":
			e.Credentials.PSK = []byte(d.Secret)
		case d.Secret != "":
			e.Credentials.Password = d.Secret
		default:
			e.Credentials.Password = devices.GeneratePassword() // registered, but auth is open or by certificate
		}
		entries = append(entries, e)
	}
	outcomes, err := reg.Put(ctx, entries, true)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "provisioned %d devices in the registry\n", len(outcomes))

	if cfg.Enrich.Backend != enrich.BackendRedis {
		fmt.Fprintln(stdout, "enrich.backend is not redis: reference data not loaded")
		return nil
	}
	tables := map[string]map[string]map[string]string{"devices": {}}
	for _, d := range fleet {
		tables["devices"][d.ID] = d.Ref()
	}
	dir, err := os.MkdirTemp("", "iotgw-provision")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "fleet.yaml")
	b, err := yaml.Marshal(tables)
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return err
	}
	lctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	_, err = enrich.Load(lctx, cfg.Enrich, path, stdout)
	return err
}

// runDevSimulator feeds `iotgw dev` with a small fleet until ctx ends.
func runDevSimulator(ctx context.Context, mqttAddr string, trucks int, rate float64, stdout, stderr io.Writer) {
	host := "127.0.0.1"
	port := mqttAddr[strings.LastIndex(mqttAddr, ":")+1:]
	o := simulator.Options{
		Broker: host + ":" + port, Trucks: trucks, Rate: rate, Jitter: 0.2, RampUp: 2 * time.Second,
		Progress: stderr,
		Logger:   slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	rep, err := simulator.Run(ctx, o)
	if err != nil {
		fmt.Fprintln(stderr, "simulator:", err)
		return
	}
	fmt.Fprintln(stdout)
	rep.Print(stdout)
}
