package mqtt

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/iotgw/iotgw/buffer"
	"github.com/iotgw/iotgw/devices"
	"github.com/iotgw/iotgw/gateway"
)

// Stats are the MQTT adapter's counters since start.
type Stats struct {
	Connections   int64  `json:"connections"`     // clients connected now
	Received      uint64 `json:"received"`        // PUBLISH packets from devices
	Acked         uint64 `json:"acked"`           // QoS 1/2 acks written after a durable append
	RefusedFull   uint64 `json:"refused_full"`    // MQTT 5 acks with 0x97 because the buffer was full
	PausedFull    uint64 `json:"paused_full"`     // MQTT 3.1.1 publishes that waited for buffer space
	DroppedQoS0   uint64 `json:"dropped_qos0"`    // QoS 0 messages dropped because the buffer was full
	RefusedRate   uint64 `json:"refused_rate"`    // MQTT 5 acks with 0x96 because the device was over mqtt.max_rate
	PausedRate    uint64 `json:"paused_rate"`     // MQTT 3.1.1 publishes that waited for the device's rate budget
	DroppedRate   uint64 `json:"dropped_rate"`    // QoS 0 messages dropped because the device was over mqtt.max_rate
	AppendErrors  uint64 `json:"append_errors"`   // appends that failed; the connection was closed unacknowledged
	AuthFailures  uint64 `json:"auth_failures"`   // connections refused for credentials, certificate, client id or will topic
	RefusedBusy   uint64 `json:"refused_busy"`    // connections refused because mqtt.max_connections were connected
	TooLargeDrops uint64 `json:"too_large_drops"` // packets over mqtt.max_packet_size (connection closed) or buffer.max_record_bytes (MQTT 5: PUBACK 0x95)
	Commands      uint64 `json:"commands"`        // downlink commands acknowledged by devices (or sent, at QoS 0)
	Panics        uint64 `json:"panics"`          // connections closed because mochi panicked handling them
	AcceptErrors  uint64 `json:"accept_errors"`   // failed accepts (such as running out of file descriptors), retried
	FanOutDropped uint64 `json:"fan_out_dropped"` // publishes to local subscribers dropped: their mqtt.max_pending_writes queue was full
}

type counters struct {
	received, acked, refusedFull, pausedFull, droppedQoS0, refusedRate, pausedRate, droppedRate,
	appendErrors, authFailures, refusedBusy, tooLarge, commands, panics, acceptErrors atomic.Uint64
}

// Server is the MQTT front door; it implements gateway.Source and
// gateway.CommandTarget.
type Server struct {
	opts   Options
	buf    gateway.Buffer
	auth   Authenticator
	authz  Authorizer
	status StatusRecorder
	log    *slog.Logger
	tls    *tls.Config // nil when no listener uses TLS

	mochi     *mochi.Server
	inline    *mochi.Client // mochi's inline client, the origin of local fan-out
	listeners map[string]net.Listener
	sessions  sync.Map // *mochi.Client -> *session
	devices   *deviceTable
	admitted  atomic.Int64 // connections holding a max_connections slot
	handed    atomic.Int64 // connections accepted and given to mochi
	entered   atomic.Int64 // of those, connections mochi started reading (see handoff)
	stats     counters
	closing   atomic.Bool
	closed    atomic.Bool
	wg        sync.WaitGroup // ack writers and the sweeper
	stop      chan struct{}  // stops the sweeper
	now       func() time.Time
}

var (
	_ gateway.Source        = (*Server)(nil)
	_ gateway.CommandTarget = (*Server)(nil)
)

// Listener ids, as mochi and the address getters know them.
const (
	listenerTCP       = "tcp"
	listenerTLS       = "tls"
	listenerWebSocket = "websocket"
)

// New builds the server; it reads the TLS files the options name, so a bad
// certificate fails here, before anything listens. auth and authz may be
// nil for open mode; status may be nil.
func New(opts Options, buf gateway.Buffer, auth Authenticator, authz Authorizer, status StatusRecorder, logger *slog.Logger) (*Server, error) {
	opts.SetDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		opts: opts, buf: buf, auth: auth, authz: authz, status: status,
		log:       logger.With("component", "mqtt"),
		listeners: map[string]net.Listener{},
		devices:   newDeviceTable(opts.MaxRate, opts.MaxBurst),
		stop:      make(chan struct{}),
		now:       time.Now,
	}
	if opts.usesTLS() {
		cfg, err := s.serverTLS()
		if err != nil {
			return nil, err
		}
		s.tls = cfg
	}

	caps := mochi.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = uint32(opts.MaxPacketSize)
	caps.ReceiveMaximum = uint16(opts.ReceiveMaximum)
	caps.MaximumClientWritesPending = int32(opts.MaxPendingWrites)
	s.mochi = mochi.New(&mochi.Options{
		Capabilities: caps,
		InlineClient: true, // local fan-out after durable acks
		// The hook rejects every QoS 1/2 publish it stored (it acks them
		// itself) and copies what it keeps of it (detach): mochi reads the
		// next publish into the same memory. No allocation per publish.
		ReuseRejectedPublishBodies: true,
		// A client's read buffer is allocated with the connection and
		// holds a few telemetry packets per read; mochi's default is 2 KiB.
		ClientNetReadBufferSize:  1024,
		ClientNetWriteBufferSize: 1024,
		Logger:                   slog.New(quietHandler{logger.Handler(), slog.LevelWarn}).With("component", "mqtt-broker"),
	})
	s.inline, _ = s.mochi.Clients.Get(mochi.InlineClientId)
	if err := s.mochi.AddHook(&hook{s: s}, nil); err != nil {
		return nil, fmt.Errorf("mqtt: add hook: %w", err)
	}
	return s, nil
}

// Broker exposes the embedded broker.
func (s *Server) Broker() *mochi.Server { return s.mochi }

// Start implements gateway.Source: it binds every configured listener (or
// none, if one fails) and serves them until Close.
func (s *Server) Start(ctx context.Context) error {
	type spec struct {
		id, key, addr string
		tls           *tls.Config
		ws            bool
	}
	var specs []spec
	if s.opts.TCP != Off {
		specs = append(specs, spec{listenerTCP, "mqtt.tcp", s.opts.TCP, nil, false})
	}
	if s.opts.TLS != Off {
		specs = append(specs, spec{listenerTLS, "mqtt.tls", s.opts.TLS, s.tls, false})
	}
	if s.opts.WebSocket != Off {
		var cfg *tls.Config
		if s.opts.WebSocketTLS {
			cfg = s.tls
		}
		specs = append(specs, spec{listenerWebSocket, "mqtt.websocket", s.opts.WebSocket, cfg, true})
	}
	bound := map[string]net.Listener{}
	closeAll := func() {
		for _, l := range bound {
			l.Close()
		}
	}
	for _, sp := range specs {
		raw, err := net.Listen("tcp", sp.addr)
		if err != nil {
			closeAll()
			return fmt.Errorf("%s: listen on %s: %w", sp.key, sp.addr, err)
		}
		var l net.Listener = &trackedListener{Listener: raw, s: s, handoff: !sp.ws}
		if sp.tls != nil {
			l = tls.NewListener(l, sp.tls)
		}
		if sp.ws {
			l = newWSListener(s, l, s.opts.ConnectTimeout, slog.NewLogLogger(s.log.Handler(), slog.LevelDebug))
		}
		bound[sp.id] = l
	}
	for _, sp := range specs {
		if err := s.mochi.AddListener(&mochiListener{id: sp.id, ln: bound[sp.id], s: s}); err != nil {
			closeAll()
			return fmt.Errorf("%s: %w", sp.key, err)
		}
	}
	s.listeners = bound
	if err := s.mochi.Serve(); err != nil {
		closeAll()
		return fmt.Errorf("mqtt: serve: %w", err)
	}
	if s.opts.MaxRate > 0 {
		s.wg.Add(1)
		go s.sweep()
	}
	return nil
}

// sweep forgets the rate budgets of devices that left, once full again.
func (s *Server) sweep() {
	defer s.wg.Done()
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.devices.sweep(s.now())
		}
	}
}

func (s *Server) addr(id, configured string) (string, error) {
	if configured == Off {
		return "", ErrListenerOff
	}
	l, ok := s.listeners[id]
	if !ok {
		return "", ErrNotStarted
	}
	return l.Addr().String(), nil
}

// Addr is the bound plain TCP address (useful with port 0).
func (s *Server) Addr() (string, error) { return s.addr(listenerTCP, s.opts.TCP) }

// TLSAddr is the bound MQTT over TLS address.
func (s *Server) TLSAddr() (string, error) { return s.addr(listenerTLS, s.opts.TLS) }

// WebSocketAddr is the bound MQTT over WebSocket address.
func (s *Server) WebSocketAddr() (string, error) {
	return s.addr(listenerWebSocket, s.opts.WebSocket)
}

// Close implements gateway.Source: new QoS 1/2 publishes are no longer
// appended (their senders get no ack and resend after reconnecting), acks
// of appends already made are written, then connections close.
func (s *Server) Close(ctx context.Context) error {
	if s.closed.Swap(true) {
		return nil
	}
	s.closing.Store(true)
	for {
		n := 0
		s.sessions.Range(func(_, v any) bool {
			n += v.(*session).acks.pending()
			return true
		})
		if n == 0 {
			break
		}
		select {
		case <-ctx.Done():
			s.log.Warn("closing with acks still pending; those devices will resend", "pending", n)
			n = 0
		case <-time.After(5 * time.Millisecond):
		}
		if n == 0 {
			break
		}
	}
	close(s.stop)
	// Stop accepting first, and let mochi pick up what was accepted (see
	// handoff); then mochi disconnects every client.
	for _, l := range s.listeners {
		l.Close()
	}
	for deadline := time.Now().Add(time.Second); s.entered.Load() < s.handed.Load() && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	err := s.mochi.Close()
	s.wg.Wait()
	return err
}

// Stats returns the counters.
func (s *Server) Stats() Stats {
	return Stats{
		Connections:   atomic.LoadInt64(&s.mochi.Info.ClientsConnected),
		Received:      s.stats.received.Load(),
		Acked:         s.stats.acked.Load(),
		RefusedFull:   s.stats.refusedFull.Load(),
		PausedFull:    s.stats.pausedFull.Load(),
		DroppedQoS0:   s.stats.droppedQoS0.Load(),
		RefusedRate:   s.stats.refusedRate.Load(),
		PausedRate:    s.stats.pausedRate.Load(),
		DroppedRate:   s.stats.droppedRate.Load(),
		AppendErrors:  s.stats.appendErrors.Load(),
		AuthFailures:  s.stats.authFailures.Load(),
		RefusedBusy:   s.stats.refusedBusy.Load(),
		TooLargeDrops: s.stats.tooLarge.Load(),
		Commands:      s.stats.commands.Load(),
		Panics:        s.stats.panics.Load(),
		AcceptErrors:  s.stats.acceptErrors.Load(),
		FanOutDropped: uint64(atomic.LoadInt64(&s.mochi.Info.MessagesDropped)),
	}
}

// hook is the project's mochi hook: admission, auth, ACL, durable ingest
// and downlink acknowledgements.
type hook struct {
	mochi.HookBase
	s *Server
}

func (h *hook) ID() string { return "iotgw" }

func (h *hook) Provides(b byte) bool {
	switch b {
	case mochi.OnConnect, mochi.OnConnectAuthenticate, mochi.OnACLCheck, mochi.OnPublish,
		mochi.OnSessionEstablished, mochi.OnDisconnect, mochi.OnQosComplete:
		return true
	}
	return false
}

// OnConnect ties the connection to its client (for cleaning up after a
// panic, see serveConn) and admits it against mqtt.max_connections. The
// slot is held until the connection closes, whichever way it ends.
func (h *hook) OnConnect(cl *mochi.Client, pk packets.Packet) error {
	s := h.s
	tc := baseConn(cl.Net.Conn)
	if tc == nil {
		return nil
	}
	tc.client = cl
	if s.opts.MaxConnections == 0 {
		return nil
	}
	if s.admitted.Add(1) > int64(s.opts.MaxConnections) {
		s.admitted.Add(-1)
		s.stats.refusedBusy.Add(1)
		s.log.Warn("connection refused: mqtt.max_connections reached", "client", cl.ID, "remote", cl.Net.Remote, "max_connections", s.opts.MaxConnections)
		s.refuse(cl, packets.ErrServerBusy)
		return packets.ErrServerBusy
	}
	if !tc.admit() {
		s.admitted.Add(-1) // closed meanwhile
		return mochi.ErrConnectionClosed
	}
	return nil
}

// refuse answers a CONNECT with a failure CONNACK and closes the
// connection; mochi's own CONNACK attempt afterwards finds it closed.
func (s *Server) refuse(cl *mochi.Client, code packets.Code) {
	ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}, ReasonCode: code.Code}
	if cl.Properties.ProtocolVersion < 5 {
		ack.ReasonCode = connackV3[code.Code]
		if ack.ReasonCode == 0 {
			ack.ReasonCode = packets.Err3ServerUnavailable.Code
		}
	} else {
		ack.Properties.ReasonString = code.Reason
	}
	_ = cl.WritePacket(ack)
	cl.Stop(code)
}

// connackV3 maps the MQTT 5 CONNACK reasons the gateway uses to MQTT 3.1.1
// return codes (3.1.1 section 3.2.2.3).
var connackV3 = map[byte]byte{
	packets.ErrClientIdentifierNotValid.Code: 0x02, // identifier rejected
	packets.ErrServerUnavailable.Code:        0x03, // server unavailable
	packets.ErrServerBusy.Code:               0x03,
	packets.ErrBadUsernameOrPassword.Code:    0x04, // bad user name or password
	packets.ErrNotAuthorized.Code:            0x05, // not authorized
}

func (h *hook) OnSessionEstablished(cl *mochi.Client, pk packets.Packet) {
	s := h.s
	sess := &session{cl: cl, device: s.identity(cl)}
	sess.acks = ackQueue{cl: cl, s: s, sess: sess}
	s.sessions.Store(cl, sess)
	s.devices.own(sess.device, sess, s.now())
	s.keepClientKnown(cl)
	s.setStatus(sess.device, true)
}

// keepClientKnown puts cl back into mochi's clients map, with its
// subscriptions, if mochi dropped it. When a connection takes over a
// session, mochi's teardown of the old connection deletes the client id
// from its map (and the old client's filters from the topic index) unless
// it already sees the takeover flag, which the new connection sets a
// moment later; the new client would then get no local publishes and
// escape the next takeover. It is called when a session is established
// and after each connection's teardown (for the device's current
// session).
func (s *Server) keepClientKnown(cl *mochi.Client) {
	if cl.Closed() {
		return
	}
	if cur, ok := s.mochi.Clients.Get(cl.ID); ok {
		if cur != cl {
			return // a newer connection owns the id
		}
	} else {
		s.mochi.Clients.Add(cl)
		s.log.Debug("client restored after a takeover race", "client", cl.ID)
	}
	for _, sub := range cl.State.Subscriptions.GetAll() {
		if s.mochi.Topics.Subscribe(cl.ID, sub) {
			atomic.AddInt64(&s.mochi.Info.Subscriptions, 1)
		}
	}
}

func (h *hook) OnDisconnect(cl *mochi.Client, err error, expire bool) {
	s := h.s
	v, ok := s.sessions.LoadAndDelete(cl)
	if !ok {
		return
	}
	sess := v.(*session)
	s.endCommands(sess)
	if s.devices.release(sess.device, sess) {
		s.setStatus(sess.device, false)
	}
}

// identity is the device behind a client: its authenticated id in registry
// mode, its client id in open mode.
func (s *Server) identity(cl *mochi.Client) string {
	if s.auth != nil {
		return string(cl.Properties.Username)
	}
	return cl.ID
}

// setStatus records online/offline for a device.
func (s *Server) setStatus(device string, online bool) {
	if s.status == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := s.status.SetStatus(ctx, device, online, s.now()); err != nil {
		s.log.Debug("device status not recorded", "device", device, "error", err)
	}
}

// record builds the Record for a PUBLISH from the client whose session
// identity is self. The device is that authenticated identity in registry
// mode; in open mode it is the {device} segment of devices/{device}/..., or
// the client id for other topics. It leaves the ID to the caller.
func (s *Server) record(cl *mochi.Client, pk *packets.Packet, self string) gateway.Record {
	now := s.now().UTC()
	rec := gateway.Record{
		Protocol:   gateway.ProtocolMQTT,
		Topic:      pk.TopicName,
		ReceivedAt: now,
		QoS:        pk.FixedHeader.Qos,
		Payload:    pk.Payload,
	}
	device, stream, ok := devices.ParseTopic(pk.TopicName)
	switch {
	case s.auth != nil:
		rec.Device = self
	case ok:
		rec.Device = device
	default:
		rec.Device = cl.ID
	}
	if ok && device == rec.Device {
		rec.Stream = stream
	}
	if cl.Properties.ProtocolVersion == 5 {
		rec.ContentType = pk.Properties.ContentType
		for _, up := range pk.Properties.User {
			rec.Properties = append(rec.Properties, gateway.Property{Key: up.Key, Value: up.Val})
		}
	}
	return rec
}

// encodeBufs holds the buffers records are encoded into before Append,
// which copies them (*[]byte). A fresh one per publish was a sixth of
// what the gateway allocates per record.
var encodeBufs sync.Pool

// maxPooledEncode is the largest buffer kept for reuse; a rare large
// message does not pin its size in the pool.
const maxPooledEncode = 16 << 10

func getEncodeBuf(size int) *[]byte {
	if b, ok := encodeBufs.Get().(*[]byte); ok && cap(*b) >= size {
		return b
	}
	b := make([]byte, 0, max(size, 512))
	return &b
}

func putEncodeBuf(b *[]byte) {
	if cap(*b) <= maxPooledEncode {
		*b = (*b)[:0]
		encodeBufs.Put(b)
	}
}

// session returns the client's session. mochi starts reading publishes
// only after OnSessionEstablished stored it; the fallback is for safety.
func (s *Server) session(cl *mochi.Client) *session {
	if v, ok := s.sessions.Load(cl); ok {
		return v.(*session)
	}
	sess := &session{cl: cl, device: s.identity(cl)}
	sess.acks = ackQueue{cl: cl, s: s, sess: sess}
	v, _ := s.sessions.LoadOrStore(cl, sess)
	return v.(*session)
}

// OnPublish appends the message durably and defers the ack; see doc.go.
func (h *hook) OnPublish(cl *mochi.Client, pk packets.Packet) (packets.Packet, error) {
	s := h.s
	if cl.Net.Inline {
		// Local fan-out of a device's message (see fanOut): mochi set the
		// inline client as origin; put the device back for No Local.
		if pk.Connect.ClientIdentifier != "" {
			pk.Origin = pk.Connect.ClientIdentifier
			pk.Connect.ClientIdentifier = ""
		}
		return pk, nil
	}
	s.stats.received.Add(1)
	sess := s.session(cl)
	q := &sess.acks
	if sess.pending.Load() > 0 && pk.PacketID != 0 {
		s.keepCommand(cl, sess, pk.PacketID)
	}

	if !s.allowRate(cl, sess, &pk) {
		return pk, errRejectPacket
	}

	rec := s.record(cl, &pk, sess.device)
	device := rec.Device
	// The ID is only encoded: its bytes stay in this frame (NewID's
	// string cost 2% of the gateway's CPU). A copy of rec carries it, so
	// that what rec's fields flow into (device, the log) does not take
	// id to the heap.
	var id [gateway.IDLen]byte
	gateway.PutID(&id, rec.ReceivedAt)
	withID := rec
	withID.ID = unsafe.String(&id[0], len(id))
	enc := getEncodeBuf(gateway.EncodedSize(&withID))
	defer putEncodeBuf(enc)
	data := gateway.EncodeRecord((*enc)[:0], &withID)
	*enc = data
	if pk.FixedHeader.Qos == 0 {
		if sess.failed.Load() {
			s.stats.droppedQoS0.Add(1)
			return pk, nil
		}
		err := s.buf.Append(data, func(error) {})
		if err != nil {
			s.stats.droppedQoS0.Add(1)
			s.log.Debug("qos 0 message dropped", "device", device, "error", err)
		}
		return pk, nil
	}
	if s.closing.Load() {
		// No ack: the device resends after reconnecting to a running gateway.
		return pk, errRejectPacket
	}
	sl := s.reserveSlot(cl, q, &pk)
	if sl == nil {
		return pk, errRejectPacket
	}
	if pk.FixedHeader.Retain || s.hasLocalSubscribers(pk.TopicName) {
		sl.publish = detach(&pk)
	}
	for paused := false; ; {
		if sess.failed.Load() {
			// An earlier message of this connection was not stored: this
			// one must not be stored before the device resends that one.
			sl.drop, sl.publish = true, nil
			q.fill(sl)
			return pk, errRejectPacket
		}
		err := s.buf.Append(data, sl.done)
		if err == nil {
			return pk, errRejectPacket
		}
		if !errors.Is(err, gateway.ErrFull) {
			// Shutting down: no ack, the device resends to a running
			// gateway. Any other refusal is about this message (too large
			// for a buffer record): MQTT 5 is told so and does not resend
			// it; MQTT 3.1.1 has no way to be told, so the connection
			// closes unacknowledged.
			sl.publish = nil
			switch {
			case errors.Is(err, buffer.ErrTooLarge) && cl.Properties.ProtocolVersion == 5:
				s.stats.tooLarge.Add(1)
				sl.reason = packets.ErrPacketTooLarge.Code
			case !errors.Is(err, gateway.ErrClosed) && cl.Properties.ProtocolVersion == 5:
				s.stats.appendErrors.Add(1)
				sl.reason = packets.ErrUnspecifiedError.Code
			default:
				s.stats.appendErrors.Add(1)
				sl.drop = true
			}
			s.log.Warn("message not stored", "device", device, "topic", pk.TopicName, "error", err)
			q.fill(sl)
			return pk, errRejectPacket
		}
		if cl.Properties.ProtocolVersion == 5 {
			s.stats.refusedFull.Add(1)
			sl.reason = packets.ErrQuotaExceeded.Code
			sl.publish = nil
			q.fill(sl)
			return pk, errRejectPacket
		}
		// MQTT 3.1.1 has no negative ack: stop reading this client until
		// the buffer has room. Its socket fills and TCP slows the device.
		if !paused {
			paused = true
			s.stats.pausedFull.Add(1)
			s.log.Debug("buffer full; pausing client", "device", device)
		}
		time.Sleep(s.opts.FullRetry)
		if cl.Closed() || s.closing.Load() {
			sl.drop = true
			q.fill(sl)
			return pk, errRejectPacket
		}
	}
}

// detach returns a copy of pk that shares no memory with it. mochi reads
// the next publish into the memory of one the hook rejected
// (ReuseRejectedPublishBodies), and pk's strings are views into it too;
// Packet.Copy copies the byte slices only.
func detach(pk *packets.Packet) *packets.Packet {
	cp := pk.Copy(false)
	cp.TopicName = strings.Clone(pk.TopicName)
	pr := &cp.Properties
	for _, s := range []*string{&pr.ContentType, &pr.ResponseTopic, &pr.AssignedClientID,
		&pr.AuthenticationMethod, &pr.ResponseInfo, &pr.ServerReference, &pr.ReasonString} {
		*s = strings.Clone(*s)
	}
	if len(pr.User) > 0 {
		user := make([]packets.UserProperty, len(pr.User))
		for i, u := range pr.User {
			user[i] = packets.UserProperty{Key: strings.Clone(u.Key), Val: strings.Clone(u.Val)}
		}
		pr.User = user
	}
	return &cp
}

// allowRate applies mqtt.max_rate to one PUBLISH. It returns false when
// the message must not be stored: a QoS 0 message is dropped; an MQTT 5
// QoS 1/2 message is answered with 0x96 in its turn. An MQTT 3.1.1 client
// waits here, on its read loop, until its budget allows the message.
func (s *Server) allowRate(cl *mochi.Client, sess *session, pk *packets.Packet) bool {
	if s.opts.MaxRate == 0 {
		return true
	}
	ok, wait := s.devices.take(sess.device, s.now())
	if ok {
		return true
	}
	switch {
	case pk.FixedHeader.Qos == 0:
		s.stats.droppedRate.Add(1)
		s.log.Debug("qos 0 message dropped: over mqtt.max_rate", "device", sess.device)
		return false
	case cl.Properties.ProtocolVersion == 5:
		s.stats.refusedRate.Add(1)
		s.log.Debug("publish refused: over mqtt.max_rate", "device", sess.device)
		sl := sess.acks.reserve(pk)
		sl.reason = packets.ErrMessageRateTooHigh.Code
		sess.acks.fill(sl)
		return false
	}
	s.stats.pausedRate.Add(1)
	for {
		time.Sleep(min(wait, s.opts.FullRetry))
		if cl.Closed() || s.closing.Load() {
			return false // no ack; the device resends after reconnecting
		}
		if ok, wait = s.devices.take(sess.device, s.now()); ok {
			return true
		}
	}
}

// reserveSlot reserves pk's place in the client's ack queue. It pauses
// the client's reads while the client has receive_maximum QoS 1/2
// messages unacknowledged, so a client that ignores the limit (MQTT 3.1.1
// has none) cannot queue unbounded work. Nil if the client went away.
func (s *Server) reserveSlot(cl *mochi.Client, q *ackQueue, pk *packets.Packet) *ackSlot {
	for {
		sl, room := q.tryReserve(pk, s.opts.ReceiveMaximum)
		if sl != nil {
			return sl
		}
		t := time.NewTimer(s.opts.FullRetry)
		select {
		case <-room:
		case <-t.C:
		}
		t.Stop()
		if cl.Closed() {
			return nil
		}
	}
}

// hasLocalSubscribers reports whether a message to topic would reach a
// local subscriber. mochi counts subscriptions (shared ones included), so
// the usual case of a gateway nobody subscribes to costs no topic lookup.
// Inline subscriptions (Broker().Subscribe) are not counted there; the
// gateway makes none.
func (s *Server) hasLocalSubscribers(topic string) bool {
	if atomic.LoadInt64(&s.mochi.Info.Subscriptions) == 0 {
		return false
	}
	subs := s.mochi.Topics.Subscribers(topic)
	return len(subs.Subscriptions) > 0 || len(subs.Shared) > 0 || len(subs.InlineSubscriptions) > 0
}

// fanOut hands a stored message to mochi for its local subscribers and
// retained store, as if mochi had processed it itself: MQTT 5 properties
// (user properties, content type, expiry, response topic, correlation
// data) and the origin (for No Local) are kept.
func (s *Server) fanOut(origin *mochi.Client, pk *packets.Packet) {
	if s.inline == nil {
		return
	}
	pk.PacketID = 1 // validity only: the inline client's QoS flow is not run
	pk.Connect.ClientIdentifier = origin.ID
	if err := s.mochi.InjectPacket(s.inline, *pk); err != nil {
		s.log.Debug("local fan-out failed", "topic", pk.TopicName, "error", err)
	}
}
