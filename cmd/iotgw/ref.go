package main

import (
	"context"
	"fmt"
	"io"

	"github.com/iotgw/iotgw/enrich"
	"github.com/iotgw/iotgw/gateway/app"
)

func refCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "load" {
		fmt.Fprintln(stderr, "Usage: iotgw ref load [--config FILE] [--redis ADDR] FILE.yaml|FILE.csv")
		return errUsage
	}
	fs := newFlags("ref load", "ref load [--config FILE] [--redis ADDR] FILE.yaml|FILE.csv", stderr)
	configPath := fs.String("config", "", "gateway config file whose enrich section names Redis, the key pattern and lookups")
	redisAddr := fs.String("redis", "", "Redis address (overrides enrich.redis.addr)")
	if err := fs.Parse(args[1:]); err != nil {
		return errUsage
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return errUsage
	}
	env := app.Environ()
	setIf(env, "IOTGW_ENRICH_REDIS_ADDR", *redisAddr)
	cfg, err := app.LoadForTool(*configPath, env)
	if err != nil {
		return err
	}
	opts := cfg.Enrich
	opts.Backend = enrich.BackendRedis
	sum, err := enrich.Load(ctx, opts, fs.Arg(0), stdout)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "loaded %d devices and %d keys in %s (%d round trips)\n", sum.Devices, sum.Keys, sum.Duration.Round(1e6), sum.RoundTrips)
	return nil
}
