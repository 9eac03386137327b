package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/iotgw/iotgw/devices"
	"github.com/iotgw/iotgw/gateway/app"
)

const devicesSynopsis = `devices SUBCOMMAND [flags]

Subcommands:
  add ID [--password P | --generate] [--psk HEX] [--meta k=v ...]   register a device
  list [--json]                                                       list devices with status
  remove ID                                                           delete a device
  passwd ID [--password P | --generate]                               set a new password
  import FILE.csv [--replace]                                         register a fleet from CSV

The registry is the auth section of --config (auth.backend, auth.file or
auth.redis); --file points at a YAML registry file directly.`

func devicesCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		fmt.Fprintln(stderr, "Usage: iotgw "+devicesSynopsis)
		return errUsage
	}
	sub, args := args[0], args[1:]
	fs := newFlags("devices "+sub, devicesSynopsis, stderr)
	configPath := fs.String("config", "", "gateway config file whose auth section names the registry")
	file := fs.String("file", "", "YAML registry file (overrides auth.file, implies auth.backend file)")
	password := fs.String("password", "", "the device's password (add, passwd); prefer --generate or IOTGW_DEVICE_PASSWORD, since flags show in ps")
	generate := fs.Bool("generate", false, "generate a random password and print it once (add, passwd)")
	psk := fs.String("psk", "", "DTLS pre-shared key for CoAP, hex (add)")
	var meta multiFlag
	fs.Var(&meta, "meta", "metadata key=value, repeatable (add)")
	asJSON := fs.Bool("json", false, "JSON output (list)")
	replace := fs.Bool("replace", false, "update devices that already exist (import)")
	// Flags may come after the positional argument: iotgw devices add truck-1 --generate.
	var pos []string
	for len(args) > 0 {
		if err := fs.Parse(args); err != nil {
			return errUsage
		}
		args = fs.Args()
		if len(args) > 0 {
			pos = append(pos, args[0])
			args = args[1:]
		}
	}
	env := app.Environ()
	if *file != "" {
		env["IOTGW_AUTH_BACKEND"] = devices.BackendFile
		env["IOTGW_AUTH_FILE"] = *file
	}
	cfg, err := app.LoadForTool(*configPath, env)
	if err != nil {
		return err
	}
	if cfg.Auth.Backend == devices.BackendFile && cfg.Auth.File == "" {
		return errors.New("no registry: give --file PATH, or --config FILE with auth.file (or buffer.dir) set")
	}
	if err := cfg.Auth.Validate(); err != nil {
		return err
	}
	// The tool manages the registry; mode only matters to a running gateway.
	cfg.Auth.Mode = devices.ModeRegistry
	reg, err := devices.Open(ctx, cfg.Auth, nil)
	if err != nil {
		return err
	}
	defer reg.Close()

	need := func(n int) error {
		if len(pos) != n {
			fs.Usage()
			return errUsage
		}
		return nil
	}
	secret := func() (string, bool, error) {
		switch {
		case *generate && *password != "":
			return "", false, errors.New("--password and --generate exclude each other")
		case *generate:
			return devices.GeneratePassword(), true, nil
		case *password != "":
			return *password, false, nil
		case os.Getenv("IOTGW_DEVICE_PASSWORD") != "":
			return os.Getenv("IOTGW_DEVICE_PASSWORD"), false, nil
		}
		return "", false, errors.New("give --password, --generate or IOTGW_DEVICE_PASSWORD")
	}

	switch sub {
	case "add":
		if err := need(1); err != nil {
			return err
		}
		var cred devices.Credentials
		generated := false
		if *psk != "" {
			if cred.PSK, err = devices.ParsePSK(*psk); err != nil {
				return err
			}
		}
		if *psk == "" || *password != "" || *generate {
			if cred.Password, generated, err = secret(); err != nil {
				return err
			}
		}
		m, err := devices.ParseMeta(meta)
		if err != nil {
			return err
		}
		if err := devices.Add(ctx, reg, devices.Device{ID: pos[0], Meta: m}, cred); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "added %s\n", pos[0])
		if generated {
			fmt.Fprintf(stdout, "password: %s\n(shown once; the registry keeps only its hash)\n", cred.Password)
		}
	case "list":
		if err := need(0); err != nil {
			return err
		}
		devs, err := reg.List(ctx)
		if err != nil {
			return err
		}
		if *asJSON {
			return devices.WriteJSON(stdout, devs)
		}
		return devices.WriteTable(stdout, devs)
	case "remove":
		if err := need(1); err != nil {
			return err
		}
		if err := reg.Remove(ctx, pos[0]); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "removed %s\n", pos[0])
	case "passwd":
		if err := need(1); err != nil {
			return err
		}
		pw, generated, err := secret()
		if err != nil {
			return err
		}
		if err := reg.SetPassword(ctx, pos[0], pw); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "password of %s changed\n", pos[0])
		if generated {
			fmt.Fprintf(stdout, "password: %s\n(shown once)\n", pw)
		}
	case "import":
		if err := need(1); err != nil {
			return err
		}
		f, err := os.Open(pos[0])
		if err != nil {
			return err
		}
		defer f.Close()
		sum, err := devices.Import(ctx, reg, f, devices.ImportOptions{Replace: *replace, Progress: stderr})
		fmt.Fprintln(stdout, sum)
		if err != nil {
			return err
		}
		if sum.Invalid > 0 {
			return fmt.Errorf("%d invalid row(s) in %s were not imported", sum.Invalid, pos[0])
		}
	default:
		fmt.Fprintf(stderr, "iotgw devices: unknown subcommand %q\n", sub)
		fmt.Fprintln(stderr, "Usage: iotgw "+devicesSynopsis)
		return errUsage
	}
	return nil
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }
