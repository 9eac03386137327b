package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/iotgw/iotgw/buffer"
	"github.com/iotgw/iotgw/devices"
	"github.com/iotgw/iotgw/enrich"
	"github.com/iotgw/iotgw/gateway"
	"github.com/iotgw/iotgw/protocols/coap"
	"github.com/iotgw/iotgw/protocols/mqtt"
	"github.com/prometheus/client_golang/prometheus"
)

// ShutdownTimeout bounds how long Run spends delivering the backlog and
// closing connections after its context is cancelled.
const ShutdownTimeout = 10 * time.Second

// Gateway is one running gateway.
type Gateway struct {
	cfg *Config
	log *slog.Logger

	buf           *buffer.Log
	fsyncSeconds  prometheus.Histogram // set with buf
	sink          *gateway.KafkaSink
	pipeline      *gateway.Pipeline
	egressMetrics *egressMetrics // set with pipeline
	enricher      gateway.Enricher
	enrich        *enrich.Enricher
	registry      devices.Registry
	mqtt          *mqtt.Server
	coap          *coap.Server
	downlink      *gateway.Downlink
	http          *http.Server
	httpAddr      string

	started time.Time
	ready   chan struct{}
	stopped chan struct{}
	mu      sync.Mutex
}

// New validates nothing further than Load did; it only records the config.
func New(cfg *Config, logger *slog.Logger) *Gateway {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Gateway{cfg: cfg, log: logger, ready: make(chan struct{}), stopped: make(chan struct{})}
}

// Ready is closed once every listener accepts connections.
func (g *Gateway) Ready() <-chan struct{} { return g.ready }

// MQTTAddr is the bound MQTT TCP address once Ready.
func (g *Gateway) MQTTAddr() string {
	if g.mqtt == nil {
		return ""
	}
	a, _ := g.mqtt.Addr()
	return a
}

// CoAPAddr is the bound CoAP UDP address once Ready ("" when off).
func (g *Gateway) CoAPAddr() string {
	if g.coap == nil {
		return ""
	}
	a, _ := g.coap.Addr()
	return a
}

// listenerAttrs names every bound device listener for the ready log, as
// key, address pairs; listeners that are off are left out.
func (g *Gateway) listenerAttrs() []any {
	var attrs []any
	add := func(key string, addr func() (string, error)) {
		if a, err := addr(); err == nil && a != "" {
			attrs = append(attrs, key, a)
		}
	}
	if g.mqtt != nil {
		add("mqtt", g.mqtt.Addr)
		add("mqtt_tls", g.mqtt.TLSAddr)
		add("mqtt_websocket", g.mqtt.WebSocketAddr)
	}
	if g.coap != nil {
		add("coap", g.coap.Addr)
		add("coap_dtls", g.coap.DTLSAddr)
		add("coap_tcp", g.coap.TCPAddr)
		add("coap_tls", g.coap.TLSAddr)
	}
	return attrs
}

// HTTPAddr is the bound admin address once Ready.
func (g *Gateway) HTTPAddr() string { return g.httpAddr }

// Run starts everything, serves until ctx is done, then stops in order.
func (g *Gateway) Run(ctx context.Context) (err error) {
	defer close(g.stopped)
	g.started = time.Now()
	var stops []func(context.Context) error
	stopAll := func() error {
		sctx, cancel := context.WithTimeout(context.Background(), ShutdownTimeout)
		defer cancel()
		var errs []error
		for i := len(stops) - 1; i >= 0; i-- {
			if e := stops[i](sctx); e != nil {
				errs = append(errs, e)
			}
		}
		return errors.Join(errs...)
	}
	defer func() {
		if e := stopAll(); e != nil && err == nil {
			err = e
		}
	}()

	buf, err := buffer.Open(g.cfg.Buffer, g.log)
	if err != nil {
		return fmt.Errorf("buffer.dir %s: %w", g.cfg.Buffer.Dir, err)
	}
	g.buf = buf
	g.fsyncSeconds = newFsyncHistogram()
	buf.OnSync(func(took time.Duration) { g.fsyncSeconds.Observe(took.Seconds()) })
	stops = append(stops, func(context.Context) error { return buf.Close() })

	sink, err := gateway.NewKafkaSink(g.cfg.Kafka, g.cfg.Egress.BatchRecords, g.log.With("component", "kafka"))
	if err != nil {
		return err
	}
	g.sink = sink
	stops = append(stops, func(context.Context) error { return sink.Close() })

	enricher, enr, err := g.openEnricher(ctx)
	if err != nil {
		return err
	}
	g.enricher, g.enrich = enricher, enr
	if enr != nil {
		stops = append(stops, func(context.Context) error { return enr.Close() })
	}

	router, err := gateway.NewRouter(g.cfg.Routes)
	if err != nil {
		return err
	}
	// Topics whose names the config fixes must exist (or be creatable)
	// before devices are acked for records that would go there.
	cctx, ccancel := context.WithTimeout(ctx, 15*time.Second)
	err = gateway.CheckTopics(cctx, sink, router, g.cfg.Egress.DLQ, g.log)
	ccancel()
	if err != nil {
		return err
	}
	g.pipeline = gateway.NewPipeline(g.cfg.Egress, buf, enricher, router, sink, sink.MaxBatchBytes(), g.cfg.Gateway.ID, g.log)
	g.egressMetrics = newEgressMetrics()
	g.pipeline.SetObserver(g.egressMetrics)
	egressCtx, stopEgress := context.WithCancel(context.Background())
	egressDone := make(chan error, 1)
	go func() { egressDone <- g.pipeline.Run(egressCtx) }()
	stops = append(stops, func(sctx context.Context) error {
		// Give egress until the deadline to deliver what devices were acked for.
		g.waitDrained(sctx, egressDone)
		stopEgress()
		return <-egressDone
	})

	reg, auth, authz, err := g.openAuth(ctx)
	if err != nil {
		return err
	}
	g.registry = reg
	stops = append(stops, func(context.Context) error { return reg.Close() })
	ms, err := mqtt.New(g.cfg.MQTT, buf, auth, authz, reg, g.log)
	if err != nil {
		return err
	}
	if err := ms.Start(ctx); err != nil {
		return err
	}
	g.mqtt = ms
	stops = append(stops, ms.Close)
	targets := []gateway.CommandTarget{ms}

	if coapEnabled(g.cfg.CoAP) {
		var coapAuth coap.Authenticator
		if auth != nil {
			coapAuth = reg
		}
		cs, err := coap.New(g.cfg.CoAP, buf, coapAuth, g.log)
		if err != nil {
			return err
		}
		if err := cs.Start(ctx); err != nil {
			return err
		}
		g.coap = cs
		stops = append(stops, cs.Close)
		targets = append(targets, cs)
	}

	if g.cfg.Downlink.Enabled {
		dl, err := gateway.NewDownlink(g.cfg.Downlink, g.cfg.Kafka, targets, g.cfg.Gateway.ID, g.log)
		if err != nil {
			return err
		}
		g.downlink = dl
		tctx, tcancel := context.WithTimeout(ctx, 15*time.Second)
		err = dl.CheckTopics(tctx)
		tcancel()
		if err != nil {
			return err
		}
		dctx, stopDownlink := context.WithCancel(context.Background())
		dlDone := make(chan error, 1)
		go func() { dlDone <- dl.Run(dctx) }()
		stops = append(stops, func(context.Context) error {
			stopDownlink()
			return <-dlDone
		})
	}

	if g.cfg.HTTP.Listen != "off" {
		addr, srv, err := g.startHTTP()
		if err != nil {
			return err
		}
		g.http, g.httpAddr = srv, addr
		stops = append(stops, srv.Shutdown)
	}

	g.log.Info("gateway ready", append(g.listenerAttrs(), "http", g.httpAddr, "kafka", g.cfg.Kafka.Brokers, "buffer", g.cfg.Buffer.Dir, "auth", g.cfg.Auth.Mode)...)
	close(g.ready)

	select {
	case <-ctx.Done():
		g.log.Info("shutting down")
		return nil
	case err := <-egressDone:
		// egress only returns early on a buffer failure.
		egressDone <- err
		return fmt.Errorf("egress stopped: %w", err)
	}
}

// waitDrained returns once egress has delivered everything in the buffer,
// or ctx expires, or egress stopped.
func (g *Gateway) waitDrained(ctx context.Context, egressDone chan error) {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		if g.buf.Stats().Records == 0 {
			return
		}
		select {
		case <-ctx.Done():
			g.log.Warn("shutdown timeout: undelivered records stay in the buffer for the next start", "records", g.buf.Stats().Records)
			return
		case err := <-egressDone:
			egressDone <- err
			return
		case <-t.C:
		}
	}
}

// coapEnabled reports whether any CoAP listener is configured.
func coapEnabled(o coap.Options) bool {
	for _, a := range []string{o.UDP, o.DTLS, o.TCP, o.TLS} {
		if a != "" && a != "off" {
			return true
		}
	}
	return false
}
