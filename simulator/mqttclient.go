package simulator

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// sessionExpiry is how long a broker keeps a persistent session (MQTT 5).
const sessionExpiry = 3600

// maxWait bounds every wait of a device, so the keep-alive and ack-timeout
// watchdog runs at least this often.
const maxWait = time.Second

// pending is a QoS 1/2 publish that was sent and not yet completed.
type pending struct {
	id       uint16
	seq      uint64
	pkt      []byte    // the encoded PUBLISH; written only by the sender
	first    time.Time // first send, for ack latency
	last     time.Time // last (re)send, for ack_timeout; sender only
	released bool      // QoS 2: PUBREC received and PUBREL sent, waiting for PUBCOMP
	done     bool      // completed or refused; dropped lazily from order
}

// mqttDevice is one truck: its message generator and the session state
// that outlives connections (sequence numbers and unacknowledged
// publishes). One goroutine runs it (run, serve); each connection adds a
// reader goroutine that serve starts and waits for.
type mqttDevice struct {
	env    *runEnv
	dev    *Device
	gen    generator
	res    *DeviceResult
	pace   pacer
	rng    *rand.Rand // timing: backoff jitter
	prefix string     // devices/{id}/
	seq    uint64     // last seq generated; sender only

	ackCh chan struct{} // signalled (never blocking) when an ack frees a slot

	mu        sync.Mutex
	inflight  map[uint16]*pending
	order     []*pending // in send order, done entries dropped from the front lazily
	nextID    uint16
	holdUntil time.Time // after a refusal, no new messages before this
}

func newMQTTDevice(env *runEnv, d *Device, res *DeviceResult) *mqttDevice {
	rate := env.opts.Rate
	timing := deviceRand(env.opts.Seed, d.ID, saltTiming)
	return &mqttDevice{
		env:      env,
		dev:      d,
		gen:      newTruck(d, env.opts.Seed, simSecondsPerMessage(rate, env.opts.TimeScale)),
		res:      res,
		pace:     newPacer(rate, env.opts.Jitter, timing),
		rng:      timing,
		prefix:   "devices/" + d.ID + "/",
		ackCh:    make(chan struct{}, 1),
		inflight: map[uint16]*pending{},
	}
}

// mqttConn is one network connection of a device.
type mqttConn struct {
	nc        net.Conn
	r         *bufio.Reader
	version   byte
	window    int           // max in flight on this connection
	keepAlive time.Duration // 0 disables pings
	pingSent  atomic.Int64  // unix nanos of an unanswered PINGREQ, 0 when none

	wmu       sync.Mutex // guards w, lastWrite, armedAt
	w         *bufio.Writer
	lastWrite time.Time
	armedAt   time.Time
	ackTO     time.Duration

	readDone chan struct{} // closed when the reader goroutine returned
	readErr  error         // why it returned; read after readDone
}

// write queues b and, when flush is set, sends what is queued. A write
// deadline of ack_timeout keeps a peer that stopped reading from hanging
// the device forever.
func (c *mqttConn) write(b []byte, flush bool) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	now := time.Now()
	if now.Sub(c.armedAt) > time.Second {
		if err := c.nc.SetWriteDeadline(now.Add(c.ackTO)); err != nil {
			return err
		}
		c.armedAt = now
	}
	c.lastWrite = now
	if _, err := c.w.Write(b); err != nil {
		return err
	}
	if flush {
		return c.w.Flush()
	}
	return nil
}

// flush sends whatever is queued.
func (c *mqttConn) flush() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.w.Buffered() == 0 {
		return nil
	}
	if err := c.nc.SetWriteDeadline(time.Now().Add(c.ackTO)); err != nil {
		return err
	}
	return c.w.Flush()
}

func (c *mqttConn) sinceWrite(now time.Time) time.Duration {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return now.Sub(c.lastWrite)
}

// connect dials the broker, does TLS if configured, and exchanges
// CONNECT/CONNACK. It returns whether the broker had a session for us.
func (d *mqttDevice) connect(ctx context.Context) (*mqttConn, bool, error) {
	o := &d.env.opts
	ctx, cancel := context.WithTimeout(ctx, o.ConnectTimeout)
	defer cancel()
	var dialer net.Dialer
	nc, err := dialer.DialContext(ctx, "tcp", o.Broker)
	if err != nil {
		return nil, false, fmt.Errorf("dial %s: %w", o.Broker, err)
	}
	if d.env.tls != nil {
		tc := tls.Client(nc, d.env.tls)
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, false, fmt.Errorf("tls handshake with %s: %w", o.Broker, err)
		}
		nc = tc
	}
	deadline, _ := ctx.Deadline()
	if err := nc.SetDeadline(deadline); err != nil {
		nc.Close()
		return nil, false, err
	}
	c := &mqttConn{
		nc:        nc,
		r:         bufio.NewReaderSize(nc, 16<<10),
		w:         bufio.NewWriterSize(nc, 32<<10),
		version:   d.env.version,
		window:    o.InFlight,
		keepAlive: o.KeepAlive,
		ackTO:     o.AckTimeout,
		readDone:  make(chan struct{}),
	}
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: c.version,
		Connect: packets.ConnectParams{
			ProtocolName:     []byte("MQTT"),
			Clean:            !o.PersistentSession,
			Keepalive:        uint16(o.KeepAlive / time.Second),
			ClientIdentifier: d.dev.ID,
			UsernameFlag:     true,
			Username:         []byte(d.dev.ID),
		},
	}
	if d.dev.Secret != "" {
		pk.Connect.PasswordFlag = true
		pk.Connect.Password = []byte(d.dev.Secret)
	}
	if c.version == mqttV5 && o.PersistentSession {
		pk.Properties.SessionExpiryInterval = sessionExpiry
		pk.Properties.SessionExpiryIntervalFlag = true
	}
	b, err := encodePacket(&pk)
	if err == nil {
		err = c.write(b, true)
	}
	if err != nil {
		nc.Close()
		return nil, false, fmt.Errorf("send CONNECT to %s: %w", o.Broker, err)
	}
	ack, err := readPacket(c.r, c.version)
	if err == nil && ack.FixedHeader.Type != packets.Connack {
		err = fmt.Errorf("%w: got %s, want CONNACK", ErrProtocol, packetName(ack.FixedHeader.Type))
	}
	if err != nil {
		nc.Close()
		return nil, false, fmt.Errorf("read CONNACK from %s: %w", o.Broker, err)
	}
	if ack.ReasonCode != 0 {
		nc.Close()
		return nil, false, fmt.Errorf("%w: %s", ErrConnectRefused, connectReturnText(c.version, ack.ReasonCode))
	}
	if c.version == mqttV5 {
		if rm := int(ack.Properties.ReceiveMaximum); rm > 0 && rm < c.window {
			c.window = rm
		}
		if ack.Properties.ServerKeepAliveFlag {
			c.keepAlive = time.Duration(ack.Properties.ServerKeepAlive) * time.Second
		}
	}
	c.armedAt = time.Time{}
	if err := nc.SetDeadline(time.Time{}); err != nil {
		nc.Close()
		return nil, false, err
	}
	return c, ack.SessionPresent, nil
}

// stableConnection is how long a connection must have lasted for its loss
// to restart the backoff from reconnect_min.
const stableConnection = 10 * time.Second

// run connects, serves and reconnects until the device has stopped sending
// and has nothing left in flight, or its drain time ran out.
func (d *mqttDevice) run(send context.Context) {
	life, startDrain, stop := drainContext(send, d.env.opts.DrainTimeout)
	defer stop()
	st := d.env.stats
	log := d.env.log.With("device", d.dev.ID)
	d.pace.start(time.Now())
	failures := 0
	for {
		if d.stopping(send) {
			startDrain()
			if d.inflightLen() == 0 {
				return
			}
		}
		if life.Err() != nil {
			return
		}
		c, present, err := d.connect(life)
		if err == nil {
			st.connected.Add(1)
			st.connects.Add(1)
			began := time.Now()
			err = d.serve(send, life, c, present, startDrain)
			st.connected.Add(-1)
			if err == nil || life.Err() != nil {
				return
			}
			if time.Since(began) >= stableConnection {
				failures = 0
			}
		} else if life.Err() != nil {
			return
		}
		st.errors.Add(1)
		d.env.warnOnce("device connection failed; later failures are only counted", "device", d.dev.ID, "error", err)
		log.Debug("connection failed", "error", err, "failures", failures+1)
		if !sleep(life, backoff(failures, d.env.opts.ReconnectMin, d.env.opts.ReconnectMax, d.rng)) {
			return
		}
		failures++
	}
}

// stopping tells whether the device sends no more new messages.
func (d *mqttDevice) stopping(send context.Context) bool {
	m := d.env.opts.Messages
	return send.Err() != nil || (m > 0 && d.seq >= uint64(m))
}

func (d *mqttDevice) inflightLen() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.inflight)
}

// serve runs one connection: it resends what is unacknowledged, then
// publishes paced messages within the in-flight window. It returns nil when
// the device is done (disconnected cleanly), or the error that broke the
// connection.
func (d *mqttDevice) serve(send, life context.Context, c *mqttConn, present bool, startDrain func()) error {
	go func() {
		c.readErr = d.readLoop(c)
		close(c.readDone)
	}()
	defer func() {
		c.nc.Close()
		<-c.readDone
	}()
	if err := d.resend(c, present); err != nil {
		return err
	}
	timer := time.NewTimer(maxWait)
	defer timer.Stop()
	qos := d.env.qos
	for {
		now := time.Now()
		if err := d.watchdog(c, now); err != nil {
			return err
		}
		var wait time.Duration
		sending := send
		if d.stopping(send) {
			startDrain()
			if d.inflightLen() == 0 || life.Err() != nil {
				d.disconnect(c)
				return nil
			}
			wait, sending = maxWait, nil
		} else if qos > 0 && d.inflightLen() >= c.window {
			wait = maxWait
		} else {
			wait = d.pace.wait(now)
			d.mu.Lock()
			if hold := d.holdUntil.Sub(now); hold > wait {
				wait = hold
			}
			d.mu.Unlock()
		}
		if wait <= 0 {
			if err := d.publish(c, now); err != nil {
				return err
			}
			continue
		}
		if err := c.flush(); err != nil {
			return err
		}
		var sendDone <-chan struct{}
		if sending != nil {
			sendDone = sending.Done()
		}
		timer.Reset(min(wait, maxWait))
		select {
		case <-d.ackCh:
		case <-c.readDone:
			return c.readErr
		case <-sendDone:
		case <-life.Done():
		case <-timer.C:
		}
	}
}

// resend writes every unacknowledged publish again, in its original order
// and with DUP set, counting each as a retry. Publishes whose PUBREC
// arrived get their PUBREL again if the broker kept the session; without a
// session the broker has forgotten them, and they were acked already.
func (d *mqttDevice) resend(c *mqttConn, present bool) error {
	type item struct {
		p        *pending
		released bool
	}
	d.mu.Lock()
	var todo []item
	for _, p := range d.order {
		if !p.done {
			todo = append(todo, item{p, p.released})
		}
	}
	for _, it := range todo {
		if it.released && !present {
			it.p.done = true
			delete(d.inflight, it.p.id)
		}
	}
	d.mu.Unlock()
	if len(todo) == 0 {
		return nil
	}
	now := time.Now()
	for _, it := range todo {
		var b []byte
		switch {
		case it.released && present:
			rel, err := encodePacket(&packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1}, PacketID: it.p.id, ProtocolVersion: c.version})
			if err != nil {
				return err
			}
			b = rel
		case it.released:
			continue
		default:
			it.p.pkt[0] |= 0x08 // DUP
			it.p.last = now
			b = it.p.pkt
			d.env.stats.retries.Add(1)
		}
		if err := c.write(b, false); err != nil {
			return err
		}
	}
	return c.flush()
}

// publish generates the next message and writes it (unflushed).
func (d *mqttDevice) publish(c *mqttConn, now time.Time) error {
	stream, body := d.gen.next()
	d.seq++
	seq := d.seq
	qos := d.env.qos
	var id uint16
	if qos > 0 {
		// Only this goroutine allocates ids, so the id stays free until
		// the publish is recorded below.
		d.mu.Lock()
		id = d.allocID()
		d.mu.Unlock()
	}
	payload := appendPayload(make([]byte, 0, 160+len(body)), d.dev.ID, seq, now, d.env.runID, body)
	b := appendPublish(make([]byte, 0, len(payload)+len(d.prefix)+len(stream)+32), qos, id, d.prefix, stream, payload, c.version == mqttV5)
	if qos > 0 {
		p := &pending{id: id, seq: seq, pkt: b, first: now, last: now}
		d.mu.Lock()
		d.inflight[p.id] = p
		d.order = append(d.order, p)
		d.mu.Unlock()
	}
	d.res.Sent = seq
	d.env.stats.sent.Add(1)
	d.pace.advance(now)
	return c.write(b, false)
}

// allocID returns a free packet id; called with mu held and fewer than
// 65535 in flight.
func (d *mqttDevice) allocID() uint16 {
	for {
		d.nextID++
		if d.nextID == 0 {
			d.nextID = 1
		}
		if _, used := d.inflight[d.nextID]; !used {
			return d.nextID
		}
	}
}

// watchdog fails the connection when the oldest publish or a ping went
// unanswered for ack_timeout, and pings when the connection was idle for
// half the keep-alive.
func (d *mqttDevice) watchdog(c *mqttConn, now time.Time) error {
	to := d.env.opts.AckTimeout
	d.mu.Lock()
	for len(d.order) > 0 && d.order[0].done {
		d.order[0] = nil
		d.order = d.order[1:]
	}
	var oldest time.Time
	if len(d.order) > 0 {
		oldest = d.order[0].last
	}
	d.mu.Unlock()
	if !oldest.IsZero() && now.Sub(oldest) > to {
		return fmt.Errorf("%w: publish unacknowledged for %s", ErrAckTimeout, now.Sub(oldest).Truncate(time.Millisecond))
	}
	if sent := c.pingSent.Load(); sent != 0 {
		if now.Sub(time.Unix(0, sent)) > to {
			return fmt.Errorf("%w: no PINGRESP", ErrAckTimeout)
		}
		return nil
	}
	if c.keepAlive > 0 && c.sinceWrite(now) >= c.keepAlive/2 {
		b, err := encodePacket(&packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
		if err != nil {
			return err
		}
		c.pingSent.Store(now.UnixNano())
		return c.write(b, true)
	}
	return nil
}

// disconnect ends the connection politely; errors do not matter any more.
func (d *mqttDevice) disconnect(c *mqttConn) {
	b, err := encodePacket(&packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}, ProtocolVersion: c.version})
	if err == nil {
		_ = c.write(b, true)
	}
}

// readLoop handles what the broker sends until the connection fails.
func (d *mqttDevice) readLoop(c *mqttConn) error {
	for {
		pk, err := readPacket(c.r, c.version)
		if err != nil {
			return err
		}
		flush := c.r.Buffered() == 0
		id := pk.PacketID
		switch pk.FixedHeader.Type {
		case packets.Puback:
			d.ack(c, id, pk.ReasonCode, 1)
		case packets.Pubrec:
			if d.ack(c, id, pk.ReasonCode, 2) {
				err = d.reply(c, packets.Pubrel, id, flush)
			}
		case packets.Pubcomp:
			d.complete(id)
		case packets.Pingresp:
			c.pingSent.Store(0)
		case packets.Disconnect:
			return fmt.Errorf("%w: %s", ErrServerDisconnect, reasonText(pk.ReasonCode))
		case packets.Publish:
			// Never subscribed, but acknowledge what a broker sends anyway.
			switch pk.FixedHeader.Qos {
			case 1:
				err = d.reply(c, packets.Puback, id, flush)
			case 2:
				err = d.reply(c, packets.Pubrec, id, flush)
			}
		case packets.Pubrel:
			err = d.reply(c, packets.Pubcomp, id, flush)
		default:
			return fmt.Errorf("%w: unexpected %s", ErrProtocol, packetName(pk.FixedHeader.Type))
		}
		if err != nil {
			return err
		}
	}
}

func (d *mqttDevice) reply(c *mqttConn, typ byte, id uint16, flush bool) error {
	fh := packets.FixedHeader{Type: typ}
	if typ == packets.Pubrel {
		fh.Qos = 1
	}
	b, err := encodePacket(&packets.Packet{FixedHeader: fh, PacketID: id, ProtocolVersion: c.version})
	if err != nil {
		return err
	}
	return c.write(b, flush)
}

// ack handles a PUBACK (qos 1) or PUBREC (qos 2). It reports whether a
// PUBREL is due: for an accepted PUBREC, including a repeated one.
func (d *mqttDevice) ack(c *mqttConn, id uint16, reason byte, qos byte) bool {
	now := time.Now()
	refused := c.version == mqttV5 && reason >= 0x80
	d.mu.Lock()
	p := d.inflight[id]
	if p == nil || p.released {
		d.mu.Unlock()
		return qos == 2 && !refused
	}
	if qos == 1 || refused {
		p.done = true
		delete(d.inflight, id)
	} else {
		p.released = true
	}
	if refused {
		d.holdUntil = now.Add(d.env.opts.ReconnectMin)
	} else {
		d.res.Acked.Add(p.seq)
	}
	first, seq := p.first, p.seq
	d.mu.Unlock()

	if refused {
		d.env.stats.refused.Add(1)
		d.env.log.Debug("publish refused", "device", d.dev.ID, "seq", seq, "reason", reasonText(reason))
	} else {
		d.env.stats.acked.Add(1)
		d.env.stats.latency.Record(now.Sub(first))
	}
	select {
	case d.ackCh <- struct{}{}:
	default:
	}
	return !refused
}

// complete handles PUBCOMP: the QoS 2 flow is over and the id is free.
func (d *mqttDevice) complete(id uint16) {
	d.mu.Lock()
	if p := d.inflight[id]; p != nil && p.released {
		p.done = true
		delete(d.inflight, id)
	}
	d.mu.Unlock()
	select {
	case d.ackCh <- struct{}{}:
	default:
	}
}
