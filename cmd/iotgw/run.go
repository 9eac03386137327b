package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/iotgw/iotgw/enrich"
	"github.com/iotgw/iotgw/gateway/app"
)

func runCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("run", "run --config FILE [flags]", stderr)
	configPath := fs.String("config", "", "config file (YAML); every key can also be set by IOTGW_<SECTION>_<KEY>")
	brokers := fs.String("kafka", "", "Kafka bootstrap brokers, comma-separated (overrides kafka.brokers)")
	bufferDir := fs.String("buffer-dir", "", "durable buffer directory (overrides buffer.dir)")
	logLevel := fs.String("log-level", "", "debug, info, warn or error (overrides log.level)")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	env := app.Environ()
	setIf(env, "IOTGW_KAFKA_BROKERS", *brokers)
	setIf(env, "IOTGW_BUFFER_DIR", *bufferDir)
	setIf(env, "IOTGW_LOG_LEVEL", *logLevel)
	cfg, err := app.LoadFile(*configPath, env)
	if err != nil {
		return err
	}
	logger := newLogger(cfg.Log, stderr)
	return app.New(cfg, logger).Run(ctx)
}

// setIf lets a flag win over the environment by writing it as an override.
func setIf(env map[string]string, key, val string) {
	if val != "" {
		env[key] = val
	}
}

func newLogger(o app.LogOptions, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(strings.ToUpper(o.Level)))
	hopts := &slog.HandlerOptions{Level: level}
	var logger *slog.Logger
	if o.Format == "json" {
		logger = slog.New(slog.NewJSONHandler(w, hopts))
	} else {
		logger = slog.New(slog.NewTextHandler(w, hopts))
	}
	// go-redis otherwise prints every failed reconnect to stderr itself.
	redis.SetLogger(enrich.RedisLogger{Logger: logger})
	return logger
}

func checkConfigCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("check-config", "check-config [--env] FILE", stderr)
	listEnv := fs.Bool("env", false, "also list every environment variable that overrides a key")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return errUsage
	}
	cfg, err := app.LoadFile(fs.Arg(0), app.Environ())
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: ok (kafka %s, buffer %s, mqtt %s, auth %s, %d route(s))\n",
		fs.Arg(0), strings.Join(cfg.Kafka.Brokers, ","), cfg.Buffer.Dir, cfg.MQTT.TCP, cfg.Auth.Mode, max(len(cfg.Routes), 1))
	if *listEnv {
		for _, l := range app.EnvNames() {
			fmt.Fprintln(stdout, l)
		}
	}
	return nil
}
