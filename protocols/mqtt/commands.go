package mqtt

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/iotgw/iotgw/devices"
	"github.com/iotgw/iotgw/gateway"
)

// CommandIDProperty is the MQTT 5 user property that carries a command's
// id, so a device can drop a command delivered twice (delivery is at least
// once: a command whose PUBACK was lost is sent again).
const CommandIDProperty = "iotgw-command-id"

// Deliver implements gateway.CommandTarget: it publishes cmd.Payload to
// devices/{device}/commands on the device's current connection and waits,
// bounded by ctx, for the device's PUBACK.
//
// The device must be subscribed to a filter matching that topic; a device
// connected but not (yet) subscribed gets an error matching
// gateway.ErrNotConnected, as does one that disconnects before its PUBACK,
// so the caller keeps the command and tries again. The publish goes at
// QoS 1, or QoS 0 if that is what the device subscribed with (then Deliver
// returns once it is written). MQTT 5 devices get the command's headers as
// user properties (content-type as the content type), the command id as
// user property iotgw-command-id, its expiry as the message expiry
// interval, and their subscription identifiers.
//
// The PUBLISH is written straight to the device's connection with a packet
// id from mochi's allocator, and kept in the client's inflight table (so
// mochi neither reuses the id nor loses the message if the device resumes
// its session). The PUBACK is recognised when mochi has matched it to that
// inflight entry (OnQosComplete): a PUBACK from a device always answers a
// PUBLISH from the server, so the packet id is unambiguous (see
// keepCommand for mochi's one table of both directions). A negative MQTT 5
// PUBACK (0x80 or more) returns an error matching ErrCommandRejected.
func (s *Server) Deliver(ctx context.Context, cmd gateway.Command) error {
	if !cmd.Expires.IsZero() && !s.now().Before(cmd.Expires) {
		return fmt.Errorf("command %s for device %s: %w", cmd.ID, cmd.Device, ErrCommandExpired)
	}
	sess := s.devices.owner(cmd.Device)
	if sess == nil || sess.cl.Closed() || s.closing.Load() {
		return fmt.Errorf("device %s: %w", cmd.Device, gateway.ErrNotConnected)
	}
	cl := sess.cl
	topic := devices.CommandsTopic(cmd.Device)
	sub, ok := s.subscription(cl, topic)
	if !ok {
		return fmt.Errorf("device %s is connected but not subscribed to %s: %w", cmd.Device, topic, gateway.ErrNotConnected)
	}

	pk := commandPacket(cmd, topic, sub, s.now().Unix())
	if pk.FixedHeader.Qos == 0 {
		if err := cl.WritePacket(pk); err != nil {
			return fmt.Errorf("command %s to device %s: %w (%w)", cmd.ID, cmd.Device, gateway.ErrNotConnected, err)
		}
		s.stats.commands.Add(1)
		return nil
	}
	id, err := cl.NextPacketID()
	if err != nil {
		return fmt.Errorf("command %s to device %s: no free packet id: %w", cmd.ID, cmd.Device, err)
	}
	pk.PacketID = uint16(id)
	acked := make(chan byte, 1)
	sess.mu.Lock()
	if sess.ended {
		sess.mu.Unlock()
		return fmt.Errorf("device %s: %w", cmd.Device, gateway.ErrNotConnected)
	}
	if sess.commands == nil {
		sess.commands = map[uint16]*pendingCommand{}
	}
	sess.commands[pk.PacketID] = &pendingCommand{pk: pk, acked: acked}
	sess.pending.Store(int32(len(sess.commands)))
	if cl.State.Inflight.Set(pk) {
		atomic.AddInt64(&s.mochi.Info.Inflight, 1)
	}
	sess.mu.Unlock()

	if err := cl.WritePacket(pk); err != nil {
		s.forgetCommand(sess, pk.PacketID)
		return fmt.Errorf("command %s to device %s: %w", cmd.ID, cmd.Device, err)
	}
	select {
	case code, ok := <-acked:
		if !ok {
			return fmt.Errorf("device %s disconnected before acknowledging command %s: %w", cmd.Device, cmd.ID, gateway.ErrNotConnected)
		}
		if code >= packets.ErrUnspecifiedError.Code {
			return fmt.Errorf("command %s to device %s: reason 0x%02x: %w", cmd.ID, cmd.Device, code, ErrCommandRejected)
		}
		s.stats.commands.Add(1)
		s.log.Debug("command delivered", "device", cmd.Device, "command", cmd.ID)
		return nil
	case <-ctx.Done():
		// Taken back, so that a session resumed later does not get it
		// too: the caller delivers it again.
		s.forgetCommand(sess, pk.PacketID)
		return fmt.Errorf("command %s to device %s: no PUBACK: %w", cmd.ID, cmd.Device, ctx.Err())
	}
}

// commandPacket builds the PUBLISH of a command.
func commandPacket(cmd gateway.Command, topic string, sub packets.Subscription, now int64) packets.Packet {
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: min(sub.Qos, 1)},
		TopicName:   topic,
		Payload:     cmd.Payload,
		Created:     now,
	}
	if !cmd.Expires.IsZero() {
		pk.Expiry = cmd.Expires.Unix() // mochi turns it into the message expiry interval
	}
	for _, h := range cmd.Headers {
		if strings.EqualFold(h.Key, "content-type") && pk.Properties.ContentType == "" {
			pk.Properties.ContentType = string(h.Value)
			continue
		}
		pk.Properties.User = append(pk.Properties.User, packets.UserProperty{Key: h.Key, Val: string(h.Value)})
	}
	if cmd.ID != "" {
		pk.Properties.User = append(pk.Properties.User, packets.UserProperty{Key: CommandIDProperty, Val: cmd.ID})
	}
	for _, id := range sub.Identifiers {
		if id > 0 && !slices.Contains(pk.Properties.SubscriptionIdentifier, id) {
			pk.Properties.SubscriptionIdentifier = append(pk.Properties.SubscriptionIdentifier, id)
		}
	}
	if sub.Identifier > 0 && !slices.Contains(pk.Properties.SubscriptionIdentifier, sub.Identifier) {
		pk.Properties.SubscriptionIdentifier = append(pk.Properties.SubscriptionIdentifier, sub.Identifier)
	}
	slices.Sort(pk.Properties.SubscriptionIdentifier)
	return pk
}

// subscription returns the client's subscription matching topic, plain or
// shared.
func (s *Server) subscription(cl *mochi.Client, topic string) (packets.Subscription, bool) {
	subs := s.mochi.Topics.Subscribers(topic)
	if sub, ok := subs.Subscriptions[cl.ID]; ok {
		return sub, true
	}
	for _, group := range subs.Shared {
		if sub, ok := group[cl.ID]; ok {
			return sub, true
		}
	}
	return packets.Subscription{}, false
}

// OnQosComplete completes the command a PUBACK answers; mochi calls it
// once it removed the PUBLISH from the client's inflight table. (An
// OnPacketRead hook would see every packet, and mochi copies each packet
// twice to pass it to one: 3% of the gateway's CPU under load.)
func (h *hook) OnQosComplete(cl *mochi.Client, pk packets.Packet) {
	if pk.FixedHeader.Type != packets.Puback {
		return
	}
	v, ok := h.s.sessions.Load(cl)
	if !ok {
		return
	}
	sess := v.(*session)
	sess.mu.Lock()
	c, ok := sess.commands[pk.PacketID]
	delete(sess.commands, pk.PacketID)
	sess.pending.Store(int32(len(sess.commands)))
	sess.mu.Unlock()
	if ok {
		c.acked <- pk.ReasonCode // buffered
	}
}

// keepCommand puts a command back into the client's inflight table when
// the device's own PUBLISH with the same packet id (ids are per direction)
// made mochi drop it there: mochi keeps one table for both directions and
// clears an id an incoming PUBLISH reuses, before the OnPublish hooks run.
// Without the entry mochi would ignore the command's PUBACK, and a resumed
// session would not get the command again.
func (s *Server) keepCommand(cl *mochi.Client, sess *session, id uint16) {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	if c, ok := sess.commands[id]; ok && cl.State.Inflight.Set(c.pk) {
		atomic.AddInt64(&s.mochi.Info.Inflight, 1)
	}
}

// forgetCommand drops a command nobody waits for any more.
func (s *Server) forgetCommand(sess *session, id uint16) {
	sess.mu.Lock()
	delete(sess.commands, id)
	sess.pending.Store(int32(len(sess.commands)))
	sess.mu.Unlock()
	if sess.cl.State.Inflight.Delete(id) {
		atomic.AddInt64(&s.mochi.Info.Inflight, -1)
	}
}

// endCommands fails every command waiting on a session that ended.
func (s *Server) endCommands(sess *session) {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	sess.ended = true
	for id, c := range sess.commands {
		close(c.acked)
		if sess.cl.State.Inflight.Delete(id) {
			atomic.AddInt64(&s.mochi.Info.Inflight, -1)
		}
	}
	sess.commands = nil
	sess.pending.Store(0)
}

// DisconnectDevice closes the device's current connection, if it has one
// here, and reports whether it had: for a device an operator disabled or
// removed (the registry refuses its next CONNECT; the connection it has is
// the adapter's to close). MQTT 5 clients get DISCONNECT with reason 0x98
// (administrative action).
func (s *Server) DisconnectDevice(device string) bool {
	sess := s.devices.owner(device)
	if sess == nil || sess.cl.Closed() {
		return false
	}
	_ = s.mochi.DisconnectClient(sess.cl, packets.ErrAdministrativeAction)
	sess.cl.Stop(packets.ErrAdministrativeAction)
	s.log.Info("device disconnected", "device", device)
	return true
}
