package simulator

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"time"

	piondtls "github.com/pion/dtls/v3"
	dtlsnet "github.com/pion/dtls/v3/pkg/net"
	coapdtls "github.com/plgd-dev/go-coap/v3/dtls"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/options"
	"github.com/plgd-dev/go-coap/v3/udp"
	udpclient "github.com/plgd-dev/go-coap/v3/udp/client"
)

// maxCoAPHold caps how long a 5.03 Max-Age makes a sensor wait.
const maxCoAPHold = 30 * time.Second

// coapDevice is one climate sensor. It sends one request at a time (CoAP's
// NSTART of 1), so its messages arrive in order; a confirmable request that
// fails is sent again, with the same seq, after a backoff.
type coapDevice struct {
	env  *runEnv
	dev  *Device
	gen  generator
	res  *DeviceResult
	pace pacer
	rng  *rand.Rand
	path string
	seq  uint64
	out  *payloadWriter

	unacked int // 1 when the run ended with a request unanswered
}

func newCoAPDevice(env *runEnv, d *Device, res *DeviceResult) *coapDevice {
	rate := env.opts.SensorRate
	timing := deviceRand(env.opts.Seed, d.ID, saltTiming)
	return &coapDevice{
		env:  env,
		dev:  d,
		gen:  newSensor(d, env.opts.Seed, simSecondsPerMessage(rate, env.opts.TimeScale)),
		res:  res,
		pace: newPacer(rate, env.opts.Jitter, timing),
		rng:  timing,
		path: "/devices/" + d.ID + "/" + StreamClimate,
		out:  newPayloadWriter(d.ID, env.runID),
	}
}

// dial opens the CoAP "connection": a connected UDP socket, with a DTLS-PSK
// handshake first when a key is configured.
func (d *coapDevice) dial(ctx context.Context) (*udpclient.Conn, error) {
	o := &d.env.opts
	ctx, cancel := context.WithTimeout(ctx, o.ConnectTimeout)
	defer cancel()
	errs := options.WithErrors(func(err error) {
		d.env.log.Debug("coap", "device", d.dev.ID, "error", err)
	})
	if d.dev.Secret == "" {
		c, err := udp.Dial(o.CoAP, errs)
		if err != nil {
			return nil, fmt.Errorf("dial coap %s: %w", o.CoAP, err)
		}
		return c, nil
	}
	var dialer net.Dialer
	nc, err := dialer.DialContext(ctx, "udp", o.CoAP)
	if err != nil {
		return nil, fmt.Errorf("dial coaps %s: %w", o.CoAP, err)
	}
	key := []byte(d.dev.Secret)
	dc, err := piondtls.ClientWithOptions(dtlsnet.PacketConnFromConn(nc), nc.RemoteAddr(),
		piondtls.WithPSK(func([]byte) ([]byte, error) { return key, nil }),
		piondtls.WithPSKIdentityHint([]byte(d.dev.ID)),
		piondtls.WithCipherSuites(piondtls.TLS_PSK_WITH_AES_128_CCM_8),
	)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("dtls with %s: %w", o.CoAP, err)
	}
	if err := dc.HandshakeContext(ctx); err != nil {
		dc.Close()
		return nil, fmt.Errorf("dtls handshake with %s: %w", o.CoAP, err)
	}
	return coapdtls.Client(dc, errs, options.WithCloseSocket()), nil
}

// run posts paced messages until the device stops sending and its last
// request is answered or the drain time ran out.
func (d *coapDevice) run(send context.Context) {
	life, startDrain, stop := drainContext(send, d.env.opts.DrainTimeout)
	defer stop()
	st := d.env.stats
	log := d.env.log.With("device", d.dev.ID)
	con := d.env.opts.CoAPType == "con"
	d.pace.start(time.Now())

	var conn *udpclient.Conn
	hangUp := func() {
		if conn != nil {
			conn.Close()
			<-conn.Done()
			conn = nil
			st.connected.Add(-1)
		}
	}
	defer hangUp()

	var payload []byte // the message being sent; nil when the next is due
	var seq uint64
	var first time.Time
	attempt := 0
	failed := func(err error) {
		st.errors.Add(1)
		d.env.warnOnce("device request failed; later failures are only counted", "device", d.dev.ID, "error", err)
		log.Debug("coap request failed", "error", err, "attempt", attempt+1)
		hangUp()
		sleep(life, backoff(attempt, d.env.opts.ReconnectMin, d.env.opts.ReconnectMax, d.rng))
		attempt++
	}
	for {
		if d.stopping(send) {
			startDrain()
			if payload == nil {
				return
			}
		}
		if life.Err() != nil {
			if payload != nil {
				d.unacked = 1
			}
			return
		}
		if conn == nil {
			c, err := d.dial(life)
			if err != nil {
				if life.Err() == nil {
					failed(err)
				}
				continue
			}
			conn = c
			st.connected.Add(1)
			st.connects.Add(1)
		}
		if payload == nil {
			if w := d.pace.wait(time.Now()); w > 0 {
				sleep(send, w)
				continue
			}
			now := time.Now()
			_, body := d.gen.next()
			d.seq++
			seq, first = d.seq, now
			payload = d.out.append(make([]byte, 0, 192), seq, now, body)
			d.res.Sent = seq
			st.sent.Add(1)
			d.pace.advance(now)
		} else {
			st.retries.Add(1)
		}

		code, maxAge, err := d.post(life, conn, payload, con)
		if err != nil {
			if !con {
				payload = nil // non-confirmable: sent once, lost
			}
			failed(err)
			continue
		}
		attempt = 0
		payload = nil
		if code>>5 == 2 { // 2.xx success
			d.res.Acked.Add(seq)
			st.acked.Add(1)
			st.latency.Record(time.Since(first))
			continue
		}
		st.refused.Add(1)
		log.Debug("coap request refused", "seq", seq, "code", code.String())
		hold := d.env.opts.ReconnectMin
		if code == codes.ServiceUnavailable && maxAge > 0 {
			hold = min(time.Duration(maxAge)*time.Second, maxCoAPHold)
		}
		sleep(life, hold)
	}
}

func (d *coapDevice) stopping(send context.Context) bool {
	m := d.env.opts.Messages
	return send.Err() != nil || (m > 0 && d.seq >= uint64(m))
}

// post sends one POST and returns the response code and its Max-Age.
func (d *coapDevice) post(ctx context.Context, conn *udpclient.Conn, payload []byte, con bool) (codes.Code, uint32, error) {
	ctx, cancel := context.WithTimeout(ctx, d.env.opts.AckTimeout)
	defer cancel()
	req, err := conn.NewPostRequest(ctx, d.path, message.AppJSON, bytes.NewReader(payload))
	if err != nil {
		return 0, 0, fmt.Errorf("build coap request: %w", err)
	}
	defer conn.ReleaseMessage(req)
	if !con {
		req.SetType(message.NonConfirmable)
	}
	resp, err := conn.Do(req)
	if err != nil {
		return 0, 0, fmt.Errorf("post %s: %w", d.path, err)
	}
	defer conn.ReleaseMessage(resp)
	maxAge, _ := resp.Options().GetUint32(message.MaxAge)
	return resp.Code(), maxAge, nil
}
