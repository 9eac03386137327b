package simulator

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
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

// pending is a QoS 1/2 publish that was sent and not yet completed. Once
// completed and dropped from order, it goes to spare, and a later publish
// reuses it and its packet buffer.
type pending struct {
	id       uint16
	seq      uint64
	pkt      []byte    // the encoded PUBLISH; sender only, the reader never touches it
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

	// The sender's buffers, reused for every message: the payload being
	// sent, and the packet of a QoS 0 publish (QoS 1/2 keep theirs in
	// pending until acknowledged).
	out     *payloadWriter
	payload []byte
	packet  []byte
	sent    heldCount // the sender's share of stats.sent

	// ackCh is signalled (never blocking) when an ack frees a slot and
	// wantAck is set: the sender waits for acks (its window is full, or
	// it drains), not for its next message's time. Waking it on every ack
	// while it waits to send at 1000 msg/s cost a wake-up per message.
	ackCh   chan struct{}
	wantAck atomic.Bool

	mu        sync.Mutex
	inflight  inflightTable
	order     []*pending // in send order, done entries dropped from the front lazily
	orderBuf  []*pending // the array order is a window of; see track
	spare     []*pending // dropped from order, for publish to reuse
	nextID    uint16
	holdUntil time.Time // after a refusal, no new messages before this
}

func newMQTTDevice(env *runEnv, d *Device, res *DeviceResult) *mqttDevice {
	rate := env.opts.Rate
	timing := deviceRand(env.opts.Seed, d.ID, saltTiming)
	return &mqttDevice{
		env:    env,
		dev:    d,
		gen:    newTruck(d, env.opts.Seed, simSecondsPerMessage(rate, env.opts.TimeScale)),
		res:    res,
		pace:   newPacer(rate, env.opts.Jitter, timing),
		rng:    timing,
		prefix: "devices/" + d.ID + "/",
		out:    newPayloadWriter(d.ID, env.runID),
		sent:   heldCount{to: &env.stats.sent},
		ackCh:  make(chan struct{}, 1),
	}
}

// mqttConn is one network connection of a device.
type mqttConn struct {
	nc        net.Conn
	reads     readCounter // nc, counting r's reads
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

// readCounter counts the reads from a connection, so that the reader can
// tell a packet that came off the network from one that was buffered.
type readCounter struct {
	r io.Reader
	n int
}

func (rc *readCounter) Read(p []byte) (int, error) {
	rc.n++
	return rc.r.Read(p)
}

// write queues b, at now, and, when flush is set, sends what is queued. A
// write deadline of ack_timeout keeps a peer that stopped reading from
// hanging the device forever.
func (c *mqttConn) write(now time.Time, b []byte, flush bool) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
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
		reads:     readCounter{r: nc},
		w:         bufio.NewWriterSize(nc, 32<<10),
		version:   d.env.version,
		window:    o.InFlight,
		keepAlive: o.KeepAlive,
		ackTO:     o.AckTimeout,
		readDone:  make(chan struct{}),
	}
	c.r = bufio.NewReaderSize(&c.reads, 16<<10)
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
		err = c.write(time.Now(), b, true)
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
	// Run reads Sent when the device is done; setting it per message
	// would write next to Acked, which the reader updates per ack.
	defer func() { d.res.Sent = d.seq }()
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
	return d.inflight.len()
}

// flightState is what serve decides on, read once per turn of its loop.
type flightState struct {
	oldest time.Time // last send of the oldest unacknowledged publish; zero when none
	count  int       // publishes in flight
	hold   time.Time // after a refusal, no new messages before this
}

// flight drops completed publishes from the front of order, keeping them
// for reuse, and returns the in-flight state.
func (d *mqttDevice) flight() flightState {
	d.mu.Lock()
	defer d.mu.Unlock()
	for len(d.order) > 0 && d.order[0].done {
		d.spare = append(d.spare, d.order[0])
		d.order[0] = nil
		d.order = d.order[1:]
	}
	f := flightState{count: d.inflight.len(), hold: d.holdUntil}
	if len(d.order) > 0 {
		f.oldest = d.order[0].last
	}
	return f
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
	defer d.sent.flush()
	if err := d.resend(c, present); err != nil {
		return err
	}
	timer := time.NewTimer(maxWait)
	defer timer.Stop()
	qos := d.env.qos
	for {
		now := time.Now()
		// Set before the in-flight count is read, so an ack that the
		// count misses still signals.
		d.wantAck.Store(true)
		fl := d.flight()
		if err := d.watchdog(c, now, fl.oldest); err != nil {
			return err
		}
		var wait time.Duration
		sending := send
		if d.stopping(send) {
			startDrain()
			if fl.count == 0 || life.Err() != nil {
				d.disconnect(c)
				return nil
			}
			wait, sending = maxWait, nil
		} else if qos > 0 && fl.count >= c.window {
			wait = maxWait
		} else {
			d.wantAck.Store(false)
			wait = max(d.pace.wait(now), fl.hold.Sub(now))
		}
		if wait <= 0 {
			if err := d.publish(c, now); err != nil {
				return err
			}
			continue
		}
		d.sent.flush()
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
			d.inflight.delete(it.p.id)
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
		if err := c.write(now, b, false); err != nil {
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
	d.payload = d.out.append(d.payload[:0], seq, now, body)
	qos, v5 := d.env.qos, c.version == mqttV5
	var b []byte
	if qos == 0 {
		d.packet = appendPublish(d.packet[:0], 0, 0, d.prefix, stream, d.payload, v5)
		b = d.packet
	} else {
		d.mu.Lock()
		p := d.track(seq, now)
		d.mu.Unlock()
		// The reader never touches pkt, and only this goroutine puts p
		// back in spare, so the packet is encoded outside the lock.
		p.pkt = appendPublish(p.pkt[:0], qos, p.id, d.prefix, stream, d.payload, v5)
		b = p.pkt
	}
	d.sent.add()
	d.pace.advance(now)
	return c.write(now, b, false)
}

// track records message seq, first sent at now, as in flight under a free
// packet id; called with mu held. It reuses a spare pending, and order's
// array: order slides along orderBuf as done publishes leave its front and
// new ones join its back, and moves back to the start when it reaches the
// end (to a larger array when it fills more than half), so a steady flow
// of publishes allocates nothing.
func (d *mqttDevice) track(seq uint64, now time.Time) *pending {
	var p *pending
	if n := len(d.spare); n > 0 {
		p = d.spare[n-1]
		d.spare[n-1] = nil
		d.spare = d.spare[:n-1]
		*p = pending{pkt: p.pkt[:0]}
	} else {
		p = &pending{}
	}
	p.id, p.seq, p.first, p.last = d.allocID(), seq, now, now
	d.inflight.put(p)
	if len(d.order) == cap(d.order) {
		buf := d.orderBuf
		if want := max(2*len(d.order), 16); len(buf) < want {
			buf = make([]*pending, want)
		}
		n := copy(buf, d.order)
		clear(buf[n:])
		d.orderBuf, d.order = buf, buf[:n]
	}
	d.order = append(d.order, p)
	return p
}

// allocID returns a free packet id; called with mu held and fewer than
// 65535 in flight.
func (d *mqttDevice) allocID() uint16 {
	for {
		d.nextID++
		if d.nextID == 0 {
			d.nextID = 1
		}
		if d.inflight.get(d.nextID) == nil {
			return d.nextID
		}
	}
}

// watchdog fails the connection when the oldest publish (last sent at
// oldest, zero for none) or a ping went unanswered for ack_timeout, and
// pings when the connection was idle for half the keep-alive.
func (d *mqttDevice) watchdog(c *mqttConn, now, oldest time.Time) error {
	to := d.env.opts.AckTimeout
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
		return c.write(now, b, true)
	}
	return nil
}

// disconnect ends the connection politely; errors do not matter any more.
func (d *mqttDevice) disconnect(c *mqttConn) {
	b, err := encodePacket(&packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}, ProtocolVersion: c.version})
	if err == nil {
		_ = c.write(time.Now(), b, true)
	}
}

// readLoop handles what the broker sends until the connection fails. Acks
// that came in one read from the network are timed once, when that read
// returned, rather than each with a clock reading of its own.
func (d *mqttDevice) readLoop(c *mqttConn) error {
	// acked lives on this goroutine's stack, away from the cache lines the
	// sender writes.
	acked := heldCount{to: &d.env.stats.acked}
	defer acked.flush()
	var now time.Time
	for {
		reads := c.reads.n
		pk, err := readIncoming(c.r, c.version)
		if err != nil {
			return err
		}
		if c.reads.n != reads || now.IsZero() {
			now = time.Now()
		}
		flush := c.r.Buffered() == 0
		id, reason := pk.id, pk.reason
		switch pk.typ {
		case packets.Puback:
			d.ack(c, now, id, reason, 1, &acked)
		case packets.Pubrec:
			if d.ack(c, now, id, reason, 2, &acked) {
				err = d.reply(c, packets.Pubrel, id, flush)
			}
		case packets.Pubcomp:
			d.complete(id)
		case packets.Pingresp:
			c.pingSent.Store(0)
		case packets.Disconnect:
			return fmt.Errorf("%w: %s", ErrServerDisconnect, reasonText(reason))
		case packets.Publish:
			// Never subscribed, but acknowledge what a broker sends anyway.
			switch pk.qos {
			case 1:
				err = d.reply(c, packets.Puback, id, flush)
			case 2:
				err = d.reply(c, packets.Pubrec, id, flush)
			}
		case packets.Pubrel:
			err = d.reply(c, packets.Pubcomp, id, flush)
		default:
			return fmt.Errorf("%w: unexpected %s", ErrProtocol, packetName(pk.typ))
		}
		if err != nil {
			return err
		}
		if flush {
			acked.flush()
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
	return c.write(time.Now(), b, flush)
}

// ack handles a PUBACK (qos 1) or PUBREC (qos 2) read at now, counting an
// accepted publish in acked. It reports whether a PUBREL is due: for an
// accepted PUBREC, including a repeated one.
func (d *mqttDevice) ack(c *mqttConn, now time.Time, id uint16, reason byte, qos byte, acked *heldCount) bool {
	refused := c.version == mqttV5 && reason >= 0x80
	d.mu.Lock()
	p := d.inflight.get(id)
	if p == nil || p.released {
		d.mu.Unlock()
		return qos == 2 && !refused
	}
	if qos == 1 || refused {
		p.done = true
		d.inflight.delete(id)
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
		acked.add()
		d.env.stats.latency.Record(now.Sub(first))
	}
	d.wakeSender()
	return !refused
}

// wakeSender signals ackCh if the sender waits for acks.
func (d *mqttDevice) wakeSender() {
	if !d.wantAck.Load() {
		return
	}
	select {
	case d.ackCh <- struct{}{}:
	default:
	}
}

// complete handles PUBCOMP: the QoS 2 flow is over and the id is free.
func (d *mqttDevice) complete(id uint16) {
	d.mu.Lock()
	if p := d.inflight.get(id); p != nil && p.released {
		p.done = true
		d.inflight.delete(id)
	}
	d.mu.Unlock()
	d.wakeSender()
}
