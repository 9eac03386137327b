package simulator

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// DeviceResult is what one device sent and had acknowledged.
type DeviceResult struct {
	Sent      uint64 `json:"sent"`       // highest seq sent (= new messages sent)
	LastAcked uint64 `json:"last_acked"` // highest seq acknowledged
	Acked     SeqSet `json:"acked"`      // every seq acknowledged
}

// Report is the outcome of Run. Counters are over all devices; see the
// package documentation for what each counts.
type Report struct {
	RunID    string        `json:"run_id"`
	Start    time.Time     `json:"start"`
	Elapsed  time.Duration `json:"elapsed"`
	Trucks   int           `json:"trucks"`
	Sensors  int           `json:"sensors"`
	Protocol string        `json:"protocol"`  // MQTT version of the trucks
	QoS      int           `json:"qos"`       // MQTT QoS of the trucks
	CoAPType string        `json:"coap_type"` // con or non, for the sensors

	Sent     int64 `json:"sent"`
	Acked    int64 `json:"acked"`
	Refused  int64 `json:"refused"`
	Errors   int64 `json:"errors"`
	Retries  int64 `json:"retries"`
	Unacked  int64 `json:"unacked"`  // still unacknowledged when the run ended
	Connects int64 `json:"connects"` // successful connects, reconnects included

	Throughput float64 `json:"throughput"` // acked per second of Elapsed
	SendRate   float64 `json:"send_rate"`  // sent per second of Elapsed

	LatencyP50  time.Duration `json:"latency_p50"`
	LatencyP99  time.Duration `json:"latency_p99"`
	LatencyP999 time.Duration `json:"latency_p999"`
	LatencyMax  time.Duration `json:"latency_max"`

	// Devices holds each device's result by device id.
	Devices map[string]*DeviceResult `json:"devices"`
}

// maxDeviceLines is how many devices Print lists one by one.
const maxDeviceLines = 20

// Print writes the report for people.
func (r *Report) Print(w io.Writer) {
	fmt.Fprintf(w, "run %s: %d trucks (MQTT %s, QoS %d), %d sensors (CoAP %s), %s\n",
		r.RunID, r.Trucks, r.Protocol, r.QoS, r.Sensors, r.CoAPType, r.Elapsed.Round(time.Millisecond))
	fmt.Fprintf(w, "  sent %d  acked %d  refused %d  errors %d  retries %d  unacked %d  connects %d\n",
		r.Sent, r.Acked, r.Refused, r.Errors, r.Retries, r.Unacked, r.Connects)
	fmt.Fprintf(w, "  throughput %.0f acked/s (%.0f sent/s)\n", r.Throughput, r.SendRate)
	if r.Acked > 0 {
		fmt.Fprintf(w, "  ack latency p50 %s  p99 %s  p99.9 %s  max %s\n",
			fmtLatency(r.LatencyP50), fmtLatency(r.LatencyP99), fmtLatency(r.LatencyP999), fmtLatency(r.LatencyMax))
	}
	ids := make([]string, 0, len(r.Devices))
	gaps := 0
	for id, d := range r.Devices {
		ids = append(ids, id)
		if d.Acked.Len() != d.Sent {
			gaps++
		}
	}
	slices.Sort(ids)
	fmt.Fprintf(w, "  devices %d, %d with messages not acked\n", len(ids), gaps)
	for i, id := range ids {
		if i == maxDeviceLines {
			fmt.Fprintf(w, "    ... %d more\n", len(ids)-i)
			break
		}
		d := r.Devices[id]
		acked := d.Acked.String()
		if len(acked) > 60 {
			acked = acked[:57] + "..."
		}
		fmt.Fprintf(w, "    %-12s sent %d  last acked %d  acked %s\n", id, d.Sent, d.LastAcked, orDash(acked))
	}
}

func fmtLatency(d time.Duration) string {
	switch {
	case d >= time.Second:
		return d.Round(time.Millisecond).String()
	case d >= time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
	}
	return d.String()
}

func orDash(s string) string {
	if strings.TrimSpace(s) == "" {
		return "-"
	}
	return s
}
