package coap

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/iotgw/iotgw/gateway"
)

// RFC 7252 §4.8 transmission parameters, for confirmable notifications.
const (
	ackTimeout      = 2 * time.Second
	ackRandomFactor = 1.5
	maxRetransmit   = 4
	// maxNotification is the largest notification sent over UDP or DTLS:
	// RFC 7252 §4.6's 1152 bytes fit any path MTU of 1280.
	maxNotification = 1152
)

// observer is one device observing /devices/{device}/commands (RFC 7641).
type observer struct {
	device string
	peer   peer
	token  []byte

	mu  sync.Mutex
	seq uint32 // the last Observe value sent
}

func (o *observer) next() uint32 {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.seq = (o.seq + 1) & 0xffffff
	return o.seq
}

type ackKey struct {
	ep  epKey
	mid uint16
}

// observers holds one observation per device (the latest registration
// wins: a device that restarts registers again from a new port) and the
// confirmable notifications waiting for their ACK.
type observers struct {
	mu       sync.Mutex
	byDevice map[string]*observer
	waiting  map[ackKey]chan bool // true: Reset
}

func newObservers() *observers {
	return &observers{byDevice: map[string]*observer{}, waiting: map[ackKey]chan bool{}}
}

func (os *observers) len() int {
	os.mu.Lock()
	defer os.mu.Unlock()
	return len(os.byDevice)
}

func (os *observers) get(device string) *observer {
	os.mu.Lock()
	defer os.mu.Unlock()
	return os.byDevice[device]
}

// put registers o and reports whether the device had no observation.
func (os *observers) put(o *observer) bool {
	os.mu.Lock()
	defer os.mu.Unlock()
	_, had := os.byDevice[o.device]
	os.byDevice[o.device] = o
	return !had
}

// remove drops o if it is still the device's observation.
func (os *observers) remove(o *observer) bool {
	os.mu.Lock()
	defer os.mu.Unlock()
	if os.byDevice[o.device] != o {
		return false
	}
	delete(os.byDevice, o.device)
	return true
}

// acknowledged routes an ACK or Reset to the notification waiting for it.
func (os *observers) acknowledged(ep epKey, mid uint16, reset bool) {
	os.mu.Lock()
	ch := os.waiting[ackKey{ep, mid}]
	delete(os.waiting, ackKey{ep, mid})
	os.mu.Unlock()
	if ch != nil {
		ch <- reset
	}
}

func (os *observers) wait(k ackKey) chan bool {
	ch := make(chan bool, 1)
	os.mu.Lock()
	os.waiting[k] = ch
	os.mu.Unlock()
	return ch
}

func (os *observers) unwait(k ackKey) {
	os.mu.Lock()
	delete(os.waiting, k)
	os.mu.Unlock()
}

// observe handles GET /devices/{device}/commands: Observe 0 registers the
// device for commands, Observe 1 deregisters it (RFC 7641 §3.1, §3.6).
func (s *Server) observe(req *request, reply replyFunc, device string) {
	id, refused := s.identify(req, device)
	if refused != nil {
		reply(*refused)
		return
	}
	v, ok := optionUint(req.opts, message.Observe)
	switch {
	case ok && v == 0:
		o := &observer{device: id, peer: req.peer, token: append([]byte(nil), req.token...)}
		if s.obs.put(o) {
			s.setStatus(id, true)
		}
		s.log.Debug("device observes its commands", "device", id)
		reply(response{code: codes.Content, opts: message.Options{uintOption(message.Observe, o.next())}})
	case ok && v == 1:
		if o := s.obs.get(id); o != nil && o.peer.endpoint() == req.peer.endpoint() {
			s.unobserve(o)
		}
		reply(response{code: codes.Content})
	default:
		s.stats.badRequests.Add(1)
		reply(diag(codes.BadRequest, "observe only"))
	}
}

// unobserveEndpoint ends the observations of a connection that closed.
func (s *Server) unobserveEndpoint(ep epKey) {
	s.obs.mu.Lock()
	var gone []*observer
	for _, o := range s.obs.byDevice {
		if o.peer.endpoint() == ep {
			gone = append(gone, o)
		}
	}
	s.obs.mu.Unlock()
	for _, o := range gone {
		s.unobserve(o)
	}
}

func (s *Server) unobserve(o *observer) {
	if s.obs.remove(o) {
		s.setStatus(o.device, false)
		s.log.Debug("device stopped observing its commands", "device", o.device)
	}
}

func (s *Server) setStatus(device string, online bool) {
	if s.status == nil {
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, time.Second)
	defer cancel()
	if err := s.status.SetStatus(ctx, device, online, s.now()); err != nil {
		s.log.Debug("device status not recorded", "device", device, "error", err)
	}
}

// Deliver implements gateway.CommandTarget: it sends cmd to the device's
// observation as a notification (2.05 Content with the next Observe
// value). Over UDP and DTLS the notification is confirmable and Deliver
// returns nil once the device acknowledged it, retransmitting per RFC
// 7252 §4.2 while ctx allows; a Reset, or no ACK by ctx's deadline or
// after the last retransmission, ends the observation and returns ErrNoAck
// (which also matches gateway.ErrNotConnected, so the caller keeps the
// command for the device's next registration). Over TCP and TLS it returns once the
// notification is queued on the connection. A device without an
// observation gets gateway.ErrNotConnected.
func (s *Server) Deliver(ctx context.Context, cmd gateway.Command) error {
	if s.closing.Load() {
		return ErrClosed
	}
	o := s.obs.get(cmd.Device)
	if o == nil {
		return gateway.ErrNotConnected
	}
	m := message.Message{
		Code:    codes.Content,
		Token:   o.token,
		Options: message.Options{uintOption(message.Observe, o.next()), uintOption(message.ContentFormat, commandFormat(cmd))},
		Payload: cmd.Payload,
	}
	if o.peer.stream() {
		b := encodeFrame(m)
		if b == nil {
			return fmt.Errorf("device %s: command %s: %w", cmd.Device, cmd.ID, ErrCommandTooLarge)
		}
		o.peer.send(b)
		s.stats.notifications.Add(1)
		return nil
	}
	mid := s.nextMID()
	m.Type, m.MessageID = message.Confirmable, int32(mid)
	b := encodeDatagram(m)
	if b == nil || len(b) > maxNotification {
		return fmt.Errorf("device %s: command %s: %w", cmd.Device, cmd.ID, ErrCommandTooLarge)
	}
	k := ackKey{o.peer.endpoint(), mid}
	acked := s.obs.wait(k)
	defer s.obs.unwait(k)
	timeout := time.Duration(float64(ackTimeout) * (1 + rand.Float64()*(ackRandomFactor-1)))
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for attempt := 0; ; attempt++ {
		o.peer.send(b)
		select {
		case reset := <-acked:
			if reset {
				s.unobserve(o)
				return fmt.Errorf("device %s: command %s: reset: %w (%w)", cmd.Device, cmd.ID, ErrNoAck, gateway.ErrNotConnected)
			}
			s.stats.notifications.Add(1)
			return nil
		case <-timer.C:
			if attempt == maxRetransmit {
				s.unobserve(o)
				return fmt.Errorf("device %s: command %s: %w (%w)", cmd.Device, cmd.ID, ErrNoAck, gateway.ErrNotConnected)
			}
			timeout *= 2
			timer.Reset(timeout)
		case <-o.peer.gone():
			return fmt.Errorf("device %s: %w", cmd.Device, gateway.ErrNotConnected)
		case <-ctx.Done():
			if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return ctx.Err()
			}
			// No ACK within the delivery attempt: the device is most
			// likely gone (asleep, moved, rebooted). RFC 7641 §4.5 lets the
			// server drop the observation; the caller keeps the command
			// until the device registers again.
			s.unobserve(o)
			return fmt.Errorf("device %s: command %s: %w before the deadline (%w)", cmd.Device, cmd.ID, ErrNoAck, gateway.ErrNotConnected)
		case <-s.ctx.Done():
			return ErrClosed
		}
	}
}

// commandFormat picks the notification's Content-Format: from the
// command's content-type header when it names one this server knows, else
// JSON for valid JSON and octet-stream otherwise.
func commandFormat(cmd gateway.Command) uint32 {
	for _, h := range cmd.Headers {
		if !strings.EqualFold(h.Key, gateway.HeaderContentType) {
			continue
		}
		switch strings.ToLower(strings.TrimSpace(strings.SplitN(string(h.Value), ";", 2)[0])) {
		case "application/json":
			return cfJSON
		case "application/cbor":
			return cfCBOR
		case "application/senml+json":
			return cfSenMLJSON
		case "application/senml+cbor":
			return cfSenMLCBOR
		case "text/plain":
			return cfText
		case "application/octet-stream":
			return cfOctets
		}
	}
	if json.Valid(cmd.Payload) {
		return cfJSON
	}
	return cfOctets
}
