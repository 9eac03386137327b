package app

import (
	"context"
	"crypto/subtle"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/iotgw/iotgw/devices"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// startHTTP serves /healthz, /readyz, /status and /metrics.
func (g *Gateway) startHTTP() (string, *http.Server, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	g.registerMetrics(reg)

	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-g.ready:
			fmt.Fprintln(w, "ready")
		default:
			http.Error(w, "starting", http.StatusServiceUnavailable)
		}
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(g.Status())
	})
	mux.HandleFunc("GET /devices", g.serveDevices)
	mux.HandleFunc("GET /devices/{id}", g.serveDevice)
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Write(statusPage)
	})
	if g.cfg.HTTP.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	var handler http.Handler = mux
	if g.cfg.HTTP.Token != "" {
		handler = requireToken(g.cfg.HTTP.Token, mux)
	}

	ln, err := net.Listen("tcp", g.cfg.HTTP.Listen)
	if err != nil {
		return "", nil, fmt.Errorf("http.listen: %w", err)
	}
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			g.log.Error("admin http stopped", "error", err)
		}
	}()
	return ln.Addr().String(), srv, nil
}

//go:embed status.html
var statusPage []byte

// requireToken guards everything but the probes with a bearer token.
func requireToken(token string, next http.Handler) http.Handler {
	want := []byte("Bearer " + token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" || r.URL.Path == "/readyz" ||
			subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) == 1 {
			next.ServeHTTP(w, r)
			return
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="iotgw"`)
		http.Error(w, "unauthorized", http.StatusUnauthorized)
	})
}

// Status is what /status reports.
type Status struct {
	Gateway  string    `json:"gateway"`
	Started  time.Time `json:"started"`
	MQTT     any       `json:"mqtt"`
	CoAP     any       `json:"coap,omitempty"`
	Downlink any       `json:"downlink,omitempty"`
	Buffer   any       `json:"buffer"`
	Egress   any       `json:"egress"`
	KafkaUp  bool      `json:"kafka_up"`
	Brokers  []string  `json:"kafka_brokers"`
	AuthMode string    `json:"auth_mode"`
	Enrich   any       `json:"enrich,omitempty"`
	// DevicesOnline and DevicesKnown come from the registry.
	DevicesOnline int `json:"devices_online"`
	DevicesKnown  int `json:"devices_known"`
}

// serveDevices lists the registry's devices with their online state and
// last-seen time (no secrets: devices.Device carries none). ?online=true
// lists only those online.
func (g *Gateway) serveDevices(w http.ResponseWriter, r *http.Request) {
	if g.registry == nil {
		http.Error(w, "no device registry", http.StatusServiceUnavailable)
		return
	}
	onlyOnline := false
	switch v := r.URL.Query().Get("online"); v {
	case "":
	case "true", "1":
		onlyOnline = true
	default:
		http.Error(w, fmt.Sprintf("online=%q: want true", v), http.StatusBadRequest)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	devs, err := g.registry.List(ctx)
	if err != nil {
		http.Error(w, "device registry: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	out := make([]devices.Device, 0, len(devs))
	for _, d := range devs {
		if !onlyOnline || d.Online {
			out = append(out, d)
		}
	}
	writeJSON(w, out)
}

// serveDevice shows one device; 404 when the registry does not know it.
func (g *Gateway) serveDevice(w http.ResponseWriter, r *http.Request) {
	if g.registry == nil {
		http.Error(w, "no device registry", http.StatusServiceUnavailable)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	d, err := g.registry.Get(ctx, r.PathValue("id"))
	switch {
	case errors.Is(err, devices.ErrUnknownDevice):
		http.Error(w, "unknown device", http.StatusNotFound)
	case err != nil:
		http.Error(w, "device registry: "+err.Error(), http.StatusServiceUnavailable)
	default:
		writeJSON(w, d)
	}
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// Status snapshots the gateway's state.
func (g *Gateway) Status() Status {
	st := Status{Gateway: g.cfg.Gateway.ID, Started: g.started, Brokers: g.cfg.Kafka.Brokers, AuthMode: g.cfg.Auth.Mode}
	if g.mqtt != nil {
		st.MQTT = g.mqtt.Stats()
	}
	if g.coap != nil {
		st.CoAP = g.coap.Stats()
	}
	if g.downlink != nil {
		st.Downlink = g.downlink.Stats()
	}
	if g.buf != nil {
		st.Buffer = g.buf.Stats()
	}
	if g.pipeline != nil {
		es := g.pipeline.Stats()
		st.Egress, st.KafkaUp = es, es.KafkaUp
	}
	if g.enrich != nil {
		st.Enrich = g.enrich.Stats()
	}
	if g.registry != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if devs, err := g.registry.List(ctx); err == nil {
			st.DevicesKnown = len(devs)
			for _, d := range devs {
				if d.Online {
					st.DevicesOnline++
				}
			}
		}
	}
	return st
}

func (g *Gateway) registerMetrics(reg *prometheus.Registry) {
	counter := func(name, help string, f func() float64) {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, f))
	}
	gauge := func(name, help string, f func() float64) {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f))
	}
	counter("iotgw_mqtt_received_total", "PUBLISH packets received from devices.", func() float64 { return float64(g.mqtt.Stats().Received) })
	counter("iotgw_mqtt_acked_total", "QoS 1/2 acks written after a durable append.", func() float64 { return float64(g.mqtt.Stats().Acked) })
	counter("iotgw_mqtt_refused_full_total", "MQTT 5 publishes refused with 0x97 because the buffer was full.", func() float64 { return float64(g.mqtt.Stats().RefusedFull) })
	counter("iotgw_mqtt_qos0_dropped_total", "QoS 0 messages dropped because the buffer was full.", func() float64 { return float64(g.mqtt.Stats().DroppedQoS0) })
	counter("iotgw_mqtt_auth_failures_total", "Refused MQTT connections.", func() float64 { return float64(g.mqtt.Stats().AuthFailures) })
	counter("iotgw_mqtt_paused_full_total", "MQTT 3.1.1 publishes that waited for buffer space.", func() float64 { return float64(g.mqtt.Stats().PausedFull) })
	counter("iotgw_mqtt_append_errors_total", "Appends that failed; the connection was closed unacknowledged.", func() float64 { return float64(g.mqtt.Stats().AppendErrors) })
	gauge("iotgw_mqtt_connections", "Connected MQTT clients.", func() float64 { return float64(g.mqtt.Stats().Connections) })
	if g.coap != nil {
		counter("iotgw_coap_requests_total", "CoAP requests handled (duplicates not counted).", func() float64 { return float64(g.coap.Stats().Requests) })
		counter("iotgw_coap_acked_total", "CoAP ingest requests answered after a durable append.", func() float64 { return float64(g.coap.Stats().Acked) })
		counter("iotgw_coap_duplicates_total", "CoAP retransmissions answered from the deduplication cache.", func() float64 { return float64(g.coap.Stats().Duplicates) })
		counter("iotgw_coap_refused_full_total", "CoAP requests answered 5.03 because the buffer was full.", func() float64 { return float64(g.coap.Stats().RefusedFull) })
		counter("iotgw_coap_auth_failures_total", "CoAP requests refused 4.01.", func() float64 { return float64(g.coap.Stats().AuthFailures) })
		gauge("iotgw_coap_observers", "Devices observing their commands resource.", func() float64 { return float64(g.coap.Stats().Observers) })
	}
	gauge("iotgw_buffer_records", "Records in the buffer not yet acknowledged by Kafka.", func() float64 { return float64(g.buf.Stats().Records) })
	gauge("iotgw_buffer_bytes", "Bytes of records not yet acknowledged by Kafka.", func() float64 { return float64(g.buf.Stats().Bytes) })
	gauge("iotgw_buffer_disk_bytes", "Size of the buffer's segment files.", func() float64 { return float64(g.buf.Stats().DiskBytes) })
	gauge("iotgw_buffer_oldest_unsent_seconds", "Age of the oldest record not yet acknowledged by Kafka.", func() float64 {
		return g.buf.Stats().OldestUnsentAge(time.Now()).Seconds()
	})
	counter("iotgw_buffer_corrupt_skipped_total", "Corrupt records skipped on recovery.", func() float64 { return float64(g.buf.Stats().CorruptSkipped) })
	gauge("iotgw_buffer_records_per_fsync", "Group commit factor: records made durable per fsync.", func() float64 { return g.buf.Stats().RecordsPerFsync })
	counter("iotgw_buffer_fsyncs_total", "fsync calls by the buffer.", func() float64 { return float64(g.buf.Stats().Fsyncs) })
	counter("iotgw_kafka_delivered_total", "Records acknowledged by Kafka.", func() float64 { return float64(g.pipeline.Stats().Delivered) })
	counter("iotgw_kafka_dead_letters_total", "Records sent to the dead-letter topic.", func() float64 { return float64(g.pipeline.Stats().DeadLetters) })
	counter("iotgw_kafka_retries_total", "Kafka writes that had to be retried.", func() float64 { return float64(g.pipeline.Stats().Retries) })
	if g.fsyncSeconds != nil {
		reg.MustRegister(g.fsyncSeconds)
	}
	if g.egressMetrics != nil {
		reg.MustRegister(g.egressMetrics.delivery, g.egressMetrics.write, g.egressMetrics.writeMsgs)
	}
	gauge("iotgw_kafka_up", "1 when the last Kafka write succeeded.", func() float64 {
		if g.pipeline.Stats().KafkaUp {
			return 1
		}
		return 0
	})
}

// newFsyncHistogram is the buffer's fsync durations: the floor of every
// device acknowledgement, and the first thing to look at when acks are slow.
func newFsyncHistogram() prometheus.Histogram {
	return prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "iotgw_buffer_fsync_seconds",
		Help:    "fdatasync of the buffer's segment data (one per group commit under buffer.sync always).",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
	})
}

// egressMetrics turns the pipeline's timings into histograms.
type egressMetrics struct {
	delivery  prometheus.Histogram
	write     *prometheus.HistogramVec
	writeMsgs prometheus.Histogram
}

func newEgressMetrics() *egressMetrics {
	return &egressMetrics{
		delivery: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "iotgw_egress_delivery_seconds",
			Help:    "Per record, from the gateway receiving it to Kafka acknowledging it (buffer fsync, queueing, Kafka write).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
		}),
		write: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "iotgw_kafka_write_seconds",
			Help:    "Kafka writes (one batch, acks=all) by outcome: ok, or error (retried).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"outcome"}),
		writeMsgs: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "iotgw_kafka_write_messages",
			Help:    "Messages per Kafka write.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 8),
		}),
	}
}

func (m *egressMetrics) KafkaWrite(took time.Duration, msgs int, err error) {
	outcome := "ok"
	if err != nil {
		outcome = "error"
	}
	m.write.WithLabelValues(outcome).Observe(took.Seconds())
	m.writeMsgs.Observe(float64(msgs))
}

func (m *egressMetrics) Delivered(latency time.Duration) { m.delivery.Observe(latency.Seconds()) }
