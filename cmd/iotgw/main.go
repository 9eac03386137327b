// Command iotgw is the edge IoT ingestion gateway: MQTT and CoAP in, a
// durable local log, Kafka out. See `iotgw help`.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/iotgw/iotgw/gateway/app"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

type command struct {
	name  string
	usage string
	run   func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

var commands = []command{
	{"run", "run the gateway: iotgw run --config FILE", runCmd},
	{"dev", "run everything embedded (Kafka-protocol broker, open auth, file reference data)", devCmd},
	{"simulate", "run the truck/sensor fleet simulator against a gateway", simulateCmd},
	{"devices", "manage the device registry: add, list, remove, passwd, import", devicesCmd},
	{"ref", "load reference data into Redis: iotgw ref load FILE", refCmd},
	{"check-config", "validate a config file and explain errors by key: iotgw check-config FILE", checkConfigCmd},
	{"version", "print the version", versionCmd},
}

// errUsage means the arguments were wrong; the usage was already printed.
var errUsage = errors.New("usage")

func main() {
	app.TuneGC()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := dispatch(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		usage(stdout)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range commands {
		if c.name == args[0] {
			err := c.run(ctx, args[1:], stdout, stderr)
			switch {
			case err == nil:
				return 0
			case errors.Is(err, errUsage), errors.Is(err, flag.ErrHelp):
				return 2
			default:
				fmt.Fprintf(stderr, "iotgw %s: %v\n", c.name, err)
				return 1
			}
		}
	}
	fmt.Fprintf(stderr, "iotgw: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "iotgw: edge IoT ingestion gateway (MQTT/CoAP -> durable log -> Kafka)")
	fmt.Fprintln(w, "\nUsage: iotgw COMMAND [flags]   (iotgw COMMAND -h for its flags)")
	fmt.Fprintln(w, "\nCommands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-13s %s\n", c.name, c.usage)
	}
}

func versionCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fmt.Fprintln(stdout, "iotgw", version)
	return nil
}

// newFlags builds a FlagSet whose errors and help go to stderr.
func newFlags(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: iotgw %s\n\nFlags:\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}
