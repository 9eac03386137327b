package mqtt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/iotgw/iotgw/devices"
	"github.com/iotgw/iotgw/gateway"
)

// Stats are the MQTT adapter's counters since start.
type Stats struct {
	Connections   int64  // clients connected now
	Received      uint64 // PUBLISH packets from devices
	Acked         uint64 // QoS 1/2 acks written after a durable append
	RefusedFull   uint64 // MQTT 5 acks with 0x97 because the buffer was full
	PausedFull    uint64 // MQTT 3.1.1 publishes that waited for buffer space
	DroppedQoS0   uint64 // QoS 0 messages dropped because the buffer was full
	AppendErrors  uint64 // appends that failed; the connection was closed unacknowledged
	AuthFailures  uint64
	TooLargeDrops uint64
}

type counters struct {
	received, acked, refusedFull, pausedFull, droppedQoS0, appendErrors, authFailures, tooLarge atomic.Uint64
}

// Server is the MQTT front door; it implements gateway.Source.
type Server struct {
	opts   Options
	buf    gateway.Buffer
	auth   Authenticator
	authz  Authorizer
	status StatusRecorder
	log    *slog.Logger

	mochi   *mochi.Server
	tcp     *listeners.TCP
	queues  sync.Map // *mochi.Client -> *ackQueue
	stats   counters
	closing atomic.Bool
	closed  atomic.Bool
	wg      sync.WaitGroup // ack writers
	now     func() time.Time
}

var _ gateway.Source = (*Server)(nil)

// New builds the server. auth and authz may be nil for open mode.
// status may be nil.
func New(opts Options, buf gateway.Buffer, auth Authenticator, authz Authorizer, status StatusRecorder, logger *slog.Logger) (*Server, error) {
	opts.SetDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{opts: opts, buf: buf, auth: auth, authz: authz, status: status, log: logger.With("component", "mqtt"), now: time.Now}

	caps := mochi.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = uint32(opts.MaxPacketSize)
	caps.ReceiveMaximum = uint16(opts.ReceiveMaximum)
	// mochi's default of 8192 pending writes per client costs memory on
	// every idle connection; devices rarely subscribe to much.
	caps.MaximumClientWritesPending = 1024
	if opts.MaxConnections > 0 {
		caps.MaximumClients = int64(opts.MaxConnections)
	}
	s.mochi = mochi.New(&mochi.Options{
		Capabilities: caps,
		InlineClient: true, // local fan-out after durable acks and, later, downlink commands
		Logger:       slog.New(quietHandler{logger.Handler(), slog.LevelWarn}).With("component", "mqtt-broker"),
	})
	if err := s.mochi.AddHook(&hook{s: s}, nil); err != nil {
		return nil, fmt.Errorf("mqtt: add hook: %w", err)
	}
	return s, nil
}

// Broker exposes the embedded broker, for downlink publishing.
func (s *Server) Broker() *mochi.Server { return s.mochi }

// Start implements gateway.Source.
func (s *Server) Start(ctx context.Context) error {
	if s.opts.TCP != "off" {
		s.tcp = listeners.NewTCP(listeners.Config{ID: "tcp", Address: s.opts.TCP})
		if err := s.mochi.AddListener(s.tcp); err != nil {
			return fmt.Errorf("mqtt.tcp: listen on %s: %w", s.opts.TCP, err)
		}
	}
	if err := s.mochi.Serve(); err != nil {
		return fmt.Errorf("mqtt: serve: %w", err)
	}
	return nil
}

// Addr is the bound TCP address (useful with port 0).
func (s *Server) Addr() (string, error) {
	if s.tcp == nil {
		return "", ErrNotStarted
	}
	return s.tcp.Address(), nil
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
		s.queues.Range(func(_, v any) bool {
			n += v.(*ackQueue).pending()
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
	err := s.mochi.Close()
	s.wg.Wait()
	return err
}

// Stats returns the counters.
func (s *Server) Stats() Stats {
	return Stats{
		Connections:   s.mochi.Info.ClientsConnected,
		Received:      s.stats.received.Load(),
		Acked:         s.stats.acked.Load(),
		RefusedFull:   s.stats.refusedFull.Load(),
		PausedFull:    s.stats.pausedFull.Load(),
		DroppedQoS0:   s.stats.droppedQoS0.Load(),
		AppendErrors:  s.stats.appendErrors.Load(),
		AuthFailures:  s.stats.authFailures.Load(),
		TooLargeDrops: s.stats.tooLarge.Load(),
	}
}

// hook is the project's mochi hook: auth, ACL and durable ingest.
type hook struct {
	mochi.HookBase
	s *Server
}

func (h *hook) ID() string { return "iotgw" }

func (h *hook) Provides(b byte) bool {
	switch b {
	case mochi.OnConnectAuthenticate, mochi.OnACLCheck, mochi.OnPublish, mochi.OnDisconnect, mochi.OnSessionEstablished:
		return true
	}
	return false
}

func (h *hook) OnDisconnect(cl *mochi.Client, err error, expire bool) {
	h.s.queues.Delete(cl)
	h.s.setStatus(cl, false)
}

func (h *hook) OnSessionEstablished(cl *mochi.Client, pk packets.Packet) {
	h.s.setStatus(cl, true)
}

// setStatus records online/offline for the device behind cl: its
// authenticated id, or in open mode its client id.
func (s *Server) setStatus(cl *mochi.Client, online bool) {
	if s.status == nil || cl.Net.Inline {
		return
	}
	device := cl.ID
	if s.auth != nil {
		device = string(cl.Properties.Username)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := s.status.SetStatus(ctx, device, online, s.now()); err != nil {
		s.log.Debug("device status not recorded", "device", device, "error", err)
	}
}

// record builds the Record for a PUBLISH. The device is the authenticated
// identity in registry mode; in open mode it is the {device} segment of
// devices/{device}/..., or the client id for other topics.
func (s *Server) record(cl *mochi.Client, pk *packets.Packet) *gateway.Record {
	now := s.now().UTC()
	rec := &gateway.Record{
		ID:         gateway.NewID(now),
		Protocol:   gateway.ProtocolMQTT,
		Topic:      pk.TopicName,
		ReceivedAt: now,
		QoS:        pk.FixedHeader.Qos,
		Payload:    pk.Payload,
	}
	device, stream, ok := devices.ParseTopic(pk.TopicName)
	switch {
	case s.auth != nil:
		rec.Device = string(cl.Properties.Username)
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

func (s *Server) queue(cl *mochi.Client) *ackQueue {
	if q, ok := s.queues.Load(cl); ok {
		return q.(*ackQueue)
	}
	q, _ := s.queues.LoadOrStore(cl, &ackQueue{cl: cl, s: s})
	return q.(*ackQueue)
}

// OnPublish appends the message durably and defers the ack; see doc.go.
func (h *hook) OnPublish(cl *mochi.Client, pk packets.Packet) (packets.Packet, error) {
	s := h.s
	if cl.Net.Inline {
		return pk, nil
	}
	s.stats.received.Add(1)
	rec := s.record(cl, &pk)
	data := gateway.EncodeRecord(make([]byte, 0, gateway.EncodedSize(rec)), rec)

	if pk.FixedHeader.Qos == 0 {
		err := s.buf.Append(data, func(error) {})
		if err != nil {
			s.stats.droppedQoS0.Add(1)
			s.log.Debug("qos 0 message dropped", "device", rec.Device, "error", err)
		}
		return pk, nil
	}
	if s.closing.Load() {
		// No ack: the device resends after reconnecting to a running gateway.
		return pk, packets.ErrRejectPacket
	}

	q := s.queue(cl)
	sl := q.reserve()
	sl.ack = ackFor(&pk, packets.CodeSuccess)
	if s.hasLocalSubscribers(pk.TopicName) || pk.FixedHeader.Retain {
		cp := pk.Copy(false)
		sl.publish = &cp
	}
	done := func(err error) {
		if err != nil {
			s.stats.appendErrors.Add(1)
			s.log.Error("durable append failed; closing connection without ack", "device", rec.Device, "error", err)
			sl.drop = true
		}
		q.fill(sl)
	}
	for paused := false; ; {
		err := s.buf.Append(data, done)
		if err == nil {
			return pk, packets.ErrRejectPacket
		}
		if !errors.Is(err, gateway.ErrFull) {
			s.stats.appendErrors.Add(1)
			sl.drop = true
			q.fill(sl)
			return pk, packets.ErrRejectPacket
		}
		if cl.Properties.ProtocolVersion == 5 {
			s.stats.refusedFull.Add(1)
			sl.ack = ackFor(&pk, packets.ErrQuotaExceeded)
			sl.publish = nil
			q.fill(sl)
			return pk, packets.ErrRejectPacket
		}
		// MQTT 3.1.1 has no negative ack: stop reading this client until
		// the buffer has room. Its socket fills and TCP slows the device.
		if !paused {
			paused = true
			s.stats.pausedFull.Add(1)
			s.log.Debug("buffer full; pausing client", "device", rec.Device)
		}
		time.Sleep(s.opts.FullRetry)
		if cl.Closed() || s.closing.Load() {
			sl.drop = true
			q.fill(sl)
			return pk, packets.ErrRejectPacket
		}
	}
}

func (s *Server) hasLocalSubscribers(topic string) bool {
	subs := s.mochi.Topics.Subscribers(topic)
	return len(subs.Subscriptions) > 0 || len(subs.Shared) > 0 || len(subs.InlineSubscriptions) > 0
}

func ackFor(pk *packets.Packet, code packets.Code) packets.Packet {
	typ := byte(packets.Puback)
	if pk.FixedHeader.Qos == 2 {
		typ = packets.Pubrec
	}
	ack := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: typ},
		PacketID:    pk.PacketID,
		ReasonCode:  code.Code,
		Created:     time.Now().Unix(),
	}
	if code.Code >= packets.ErrUnspecifiedError.Code {
		ack.Properties.ReasonString = code.Reason
	}
	return ack
}

// release writes one ack (or closes the connection for a failed append),
// then fans the message out to local subscribers.
func (s *Server) release(cl *mochi.Client, sl *ackSlot) {
	if sl.drop {
		cl.Stop(errors.New("message not stored; closing so the device resends"))
		return
	}
	if sl.ack.FixedHeader.Type == packets.Pubrec && sl.ack.ReasonCode < packets.ErrUnspecifiedError.Code {
		// mochi answers the PUBREL from its inflight table.
		cl.State.Inflight.Set(sl.ack)
	}
	if err := cl.WritePacket(sl.ack); err != nil {
		s.log.Debug("ack not written", "client", cl.ID, "error", err)
		return
	}
	if sl.ack.ReasonCode < packets.ErrUnspecifiedError.Code {
		s.stats.acked.Add(1)
	}
	if sl.publish != nil {
		if err := s.mochi.Publish(sl.publish.TopicName, sl.publish.Payload, sl.publish.FixedHeader.Retain, sl.publish.FixedHeader.Qos); err != nil {
			s.log.Debug("local fan-out failed", "topic", sl.publish.TopicName, "error", err)
		}
	}
}
