package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/iotgw/iotgw/gateway/app"
)

func devCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("dev", "dev [--simulate] [flags]", stderr)
	dataDir := fs.String("data-dir", "", "where the buffer lives (default: <user cache dir>/iotgw/dev)")
	kafkaPort := fs.Int("kafka-port", 9092, "port of the embedded Kafka-protocol broker on 127.0.0.1")
	mqttAddr := fs.String("mqtt", ":1883", "MQTT listen address")
	httpAddr := fs.String("http", "127.0.0.1:8080", "admin HTTP listen address (metrics, health, status)")
	coapAddr := fs.String("coap", ":5683", "CoAP UDP listen address (off disables it)")
	simulate := fs.Bool("simulate", false, "also run a small truck fleet simulator against the gateway")
	trucks := fs.Int("trucks", 10, "with --simulate: number of trucks")
	rate := fs.Float64("rate", 1, "with --simulate: messages per second per truck")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if *dataDir == "" {
		d, err := app.DevDataDir()
		if err != nil {
			return err
		}
		*dataDir = d
	}
	kafka, err := app.StartDevKafka(*kafkaPort)
	if err != nil {
		return err
	}
	defer kafka.Close()

	env := map[string]string{"IOTGW_MQTT_TCP": *mqttAddr, "IOTGW_HTTP_LISTEN": *httpAddr, "IOTGW_COAP_UDP": *coapAddr, "IOTGW_LOG_LEVEL": *logLevel}
	for k, v := range app.Environ() {
		env[k] = v
	}
	cfg, err := app.DevConfig(*dataDir, kafka.Addr, env)
	if err != nil {
		return err
	}
	gw := app.New(cfg, newLogger(cfg.Log, stderr))
	done := make(chan error, 1)
	go func() { done <- gw.Run(ctx) }()
	select {
	case err := <-done:
		return err
	case <-gw.Ready():
	}
	printBanner(stdout, gw, kafka.Addr, *dataDir)
	if *simulate {
		go runDevSimulator(ctx, gw.MQTTAddr(), *trucks, *rate, stdout, stderr)
	}
	return <-done
}

func printBanner(w io.Writer, gw *app.Gateway, kafkaAddr, dataDir string) {
	mqttPort := gw.MQTTAddr()[strings.LastIndex(gw.MQTTAddr(), ":")+1:]
	fmt.Fprintf(w, `
iotgw dev is running (everything embedded, auth open).
  MQTT        %s          publish to devices/{device}/{stream}
  CoAP        %s (udp)    POST coap://HOST/devices/{device}/{stream}
  Kafka       %s    embedded Kafka-protocol broker: IN MEMORY, data is gone on exit
  admin HTTP  http://%s/status  /metrics  /healthz
  buffer      %s

Try it:
  mosquitto_pub -p %s -q 1 -t devices/truck-7/position -m '{"lat":47.1,"lon":8.5}'
  coap-client -m post -t json -e '{"temp_c":4.2}' coap://127.0.0.1/devices/sensor-1/climate
  kcat -b %s -C -t iot.position -f '%%k %%p %%s\n'

Ctrl-C stops it.
`, gw.MQTTAddr(), gw.CoAPAddr(), kafkaAddr, gw.HTTPAddr(), dataDir, mqttPort, kafkaAddr)
}
