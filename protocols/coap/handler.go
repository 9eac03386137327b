package coap

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/iotgw/iotgw/devices"
	"github.com/iotgw/iotgw/gateway"
)

// peer is the endpoint a request came from, whatever the transport.
type peer interface {
	// endpoint identifies it for deduplication, Block1 transfers and
	// notification acknowledgements.
	endpoint() epKey
	// identity is the device the transport authenticated (DTLS PSK
	// identity, certificate common name), or "".
	identity() string
	// spoofable reports a transport whose source addresses can be forged
	// (plain UDP): answers to it are never larger than the request, so the
	// server cannot be used to amplify traffic towards a victim.
	spoofable() bool
	// stream reports a reliable transport with RFC 8323 framing (TCP, TLS).
	stream() bool
	// send queues one encoded datagram or frame; it never blocks.
	send(b []byte)
	// gone is closed when the connection ends (nil for UDP, which has none).
	gone() <-chan struct{}
}

// request is one CoAP request as the handlers see it.
type request struct {
	code    codes.Code
	token   []byte
	opts    message.Options
	payload []byte
	con     bool // confirmable, or sent over a reliable transport
	size    int  // bytes on the wire, for the amplification limit
	peer    peer
}

// response is an answer before its transport encodes it.
type response struct {
	code    codes.Code
	opts    message.Options
	payload []byte
}

// replyFunc sends the answer to a request. It may be called once, from the
// handler or later from a buffer completion callback, and must not block.
type replyFunc func(response)

// Options the handlers understand. Any other critical (odd) option is
// refused with 4.02 as RFC 7252 §5.4.1 requires.
var understood = map[message.OptionID]bool{
	message.URIHost: true, message.URIPort: true, message.URIPath: true, message.URIQuery: true,
	message.Accept: true, message.Block1: true, message.Block2: true,
}

const (
	commandsStream = "commands"
	maxOptions     = 48
)

// serve handles one request that is not a duplicate.
func (s *Server) serve(req *request, reply replyFunc) {
	s.stats.requests.Add(1)
	if s.closing.Load() {
		s.stats.refusedFull.Add(1)
		reply(s.busy("shutting down"))
		return
	}
	for _, o := range req.opts {
		if o.ID == message.ProxyURI || o.ID == message.ProxyScheme {
			s.stats.badRequests.Add(1)
			reply(diag(codes.ProxyingNotSupported, "not a proxy"))
			return
		}
		if o.ID%2 == 1 && !understood[o.ID] {
			s.stats.badRequests.Add(1)
			reply(diag(codes.BadOption, "unsupported critical option "+o.ID.String()))
			return
		}
	}
	path, segments, ok := uriPath(req.opts)
	device, stream, isDevice := devices.ParsePath(path)
	if !ok || !isDevice {
		s.stats.badRequests.Add(1)
		reply(diag(codes.NotFound, "use /devices/{device}/{stream}"))
		return
	}
	commands := stream == commandsStream && segments == 3
	switch {
	case (req.code == codes.POST || req.code == codes.PUT) && !commands:
		s.ingest(req, reply, device, stream, path)
	case req.code == codes.GET && commands:
		s.observe(req, reply, device)
	default:
		s.stats.badRequests.Add(1)
		if commands {
			reply(diag(codes.MethodNotAllowed, "GET with Observe"))
		} else {
			reply(diag(codes.MethodNotAllowed, "POST or PUT"))
		}
	}
}

// identify returns the device a request acts as, or the refusal. A
// transport identity must match the path's device; without one the
// registry checks the password in the auth query parameter against the
// path's device; in open mode the path's device is taken as is.
func (s *Server) identify(req *request, device string) (string, *response) {
	if id := req.peer.identity(); id != "" {
		if id != device {
			s.stats.forbidden.Add(1)
			r := diag(codes.Forbidden, "not your device")
			return "", &r
		}
		return id, nil
	}
	if s.auth == nil {
		return device, nil
	}
	password, ok := queryValue(req.opts, authQuery)
	if !ok {
		s.stats.authFailures.Add(1)
		r := diag(codes.Unauthorized, "auth required")
		return "", &r
	}
	ctx, cancel := context.WithTimeout(s.ctx, authTimeout)
	defer cancel()
	if err := s.auth.Authenticate(ctx, device, password); err != nil {
		if errors.Is(err, devices.ErrBadCredentials) {
			s.stats.authFailures.Add(1)
			s.log.Debug("request refused", "device", device, "error", err)
			r := diag(codes.Unauthorized, "bad credentials")
			return "", &r
		}
		s.warn("device registry unavailable", "device", device, "error", err)
		s.stats.refusedFull.Add(1)
		r := s.busy("registry unavailable")
		return "", &r
	}
	return device, nil
}

// ingest appends one message (or the last block of one) and answers once
// the append is durable.
func (s *Server) ingest(req *request, reply replyFunc, device, stream, path string) {
	id, refused := s.identify(req, device)
	if refused != nil {
		reply(*refused)
		return
	}
	payload, block1, answer := s.receiveBlock(req, path)
	if answer != nil {
		reply(*answer)
		return
	}
	if len(payload) > int(s.opts.MaxPayload) {
		s.stats.tooLarge.Add(1)
		reply(s.tooLarge())
		return
	}
	body, contentType, props, bad := convertPayload(req.opts, payload)
	if bad != nil {
		s.stats.badRequests.Add(1)
		reply(*bad)
		return
	}
	now := s.now().UTC()
	rec := gateway.Record{
		ID:          gateway.NewID(now),
		Device:      id,
		Stream:      stream,
		Protocol:    gateway.ProtocolCoAP,
		Topic:       path,
		ReceivedAt:  now,
		ContentType: contentType,
		Properties:  props,
		Payload:     body,
	}
	if req.con {
		rec.QoS = 1
	}
	data := gateway.EncodeRecord(make([]byte, 0, gateway.EncodedSize(&rec)), &rec)

	if s.inflight.Add(1) > int64(s.opts.MaxInFlight) {
		s.inflight.Add(-1)
		s.stats.refusedFull.Add(1)
		reply(s.busy("busy"))
		return
	}
	ok := response{code: codes.Changed}
	if block1 != nil {
		ok.opts = ok.opts.Add(*block1)
	}
	err := s.buf.Append(data, func(err error) {
		if err != nil {
			s.stats.appendErrors.Add(1)
			s.warn("message not stored; the device must send it again", "device", id, "topic", path, "error", err)
			reply(diag(codes.InternalServerError, "not stored"))
		} else {
			s.stats.acked.Add(1)
			reply(ok)
		}
		s.inflight.Add(-1)
	})
	if err == nil {
		return
	}
	s.inflight.Add(-1)
	switch {
	case errors.Is(err, gateway.ErrFull), errors.Is(err, gateway.ErrClosed):
		s.stats.refusedFull.Add(1)
		s.log.Debug("buffer full; device told to retry", "device", id, "error", err)
		reply(s.busy("buffer full"))
	default:
		// The buffer refuses records it can never store (over its
		// max_record_bytes); retrying would not help.
		s.stats.appendErrors.Add(1)
		s.warn("message refused by the buffer", "device", id, "topic", path, "error", err)
		reply(diag(codes.RequestEntityTooLarge, "not storable"))
	}
}

// busy is 5.03 with the Max-Age a device should wait before it retries.
func (s *Server) busy(why string) response {
	r := diag(codes.ServiceUnavailable, why)
	r.opts = r.opts.Add(uintOption(message.MaxAge, uint32(s.opts.BusyMaxAge/time.Second)))
	return r
}

// tooLarge is 4.13 with the limit in Size1 (RFC 7959 §4).
func (s *Server) tooLarge() response {
	r := diag(codes.RequestEntityTooLarge, "too large")
	r.opts = r.opts.Add(uintOption(message.Size1, uint32(s.opts.MaxPayload)))
	return r
}

func diag(code codes.Code, text string) response {
	return response{code: code, payload: []byte(text)}
}

// uriPath joins the Uri-Path options. ok is false for an empty path and for
// a segment that contains '/', which joining would make ambiguous.
func uriPath(opts message.Options) (path string, segments int, ok bool) {
	var b strings.Builder
	for _, o := range opts {
		if o.ID != message.URIPath {
			continue
		}
		if segments > 0 {
			b.WriteByte('/')
		}
		v := string(o.Value)
		if v == "" || strings.ContainsRune(v, '/') {
			return "", 0, false
		}
		b.WriteString(v)
		segments++
	}
	return b.String(), segments, segments > 0
}

// queryValue returns the value of the first Uri-Query "prefix...".
func queryValue(opts message.Options, prefix string) (string, bool) {
	for _, o := range opts {
		if o.ID == message.URIQuery && strings.HasPrefix(string(o.Value), prefix) {
			return string(o.Value[len(prefix):]), true
		}
	}
	return "", false
}

func optionUint(opts message.Options, id message.OptionID) (uint32, bool) {
	for _, o := range opts {
		if o.ID == id {
			if len(o.Value) > 4 {
				return 0, false
			}
			var v uint32
			for _, b := range o.Value {
				v = v<<8 | uint32(b)
			}
			return v, true
		}
	}
	return 0, false
}

// uintOption encodes v in the fewest bytes (zero in none), RFC 7252 §3.2.
func uintOption(id message.OptionID, v uint32) message.Option {
	var b []byte
	for v > 0 {
		b = append([]byte{byte(v)}, b...)
		v >>= 8
	}
	return message.Option{ID: id, Value: b}
}
