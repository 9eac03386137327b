package coap

import (
	"encoding/binary"
	"sync"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	udpcoder "github.com/plgd-dev/go-coap/v3/udp/coder"
)

// optionsPool holds the option slices requests are decoded into. A
// request's options are used only while serve runs (answers carry their
// own), so the slice goes back when handleDatagram returns.
var optionsPool = sync.Pool{New: func() any {
	o := make(message.Options, 0, maxOptions)
	return &o
}}

// noResponse bits (RFC 7967): the classes of answers a client asked not to
// get.
const (
	noResponse2xx = 2
	noResponse4xx = 8
	noResponse5xx = 16
)

// handleDatagram is the RFC 7252 message layer shared by UDP and DTLS: it
// rejects what is not a request, answers duplicates from the
// deduplication cache, hands new requests to serve and encodes their
// answers: piggybacked in the ACK of a confirmable request, a
// non-confirmable answer to a non-confirmable one.
func (s *Server) handleDatagram(p peer, b []byte) {
	opts := optionsPool.Get().(*message.Options)
	defer func() {
		clear((*opts)[:cap(*opts)])
		optionsPool.Put(opts)
	}()
	m := message.Message{Options: (*opts)[:0]}
	if _, err := udpcoder.DefaultCoder.Decode(b, &m); err != nil {
		s.stats.malformed.Add(1)
		// RFC 7252 §4.2: a confirmable message that cannot be processed
		// is rejected with a Reset.
		if len(b) >= 4 && b[0]>>6 == 1 && message.Type((b[0]>>4)&3) == message.Confirmable {
			p.send(resetFor(binary.BigEndian.Uint16(b[2:4])))
		}
		return
	}
	mid := uint16(m.MessageID)
	if m.Type == message.Acknowledgement || m.Type == message.Reset {
		s.obs.acknowledged(p.endpoint(), mid, m.Type == message.Reset)
		return
	}
	con := m.Type == message.Confirmable
	if m.Code == codes.Empty || m.Code >= 32 {
		// A ping (empty confirmable), or a response or signal although
		// this server sends no requests: Reset if it wants an answer.
		if con {
			p.send(resetFor(mid))
		}
		return
	}
	state, ticket, cached := s.dedup.begin(dedupKey{ep: p.endpoint(), mid: mid}, s.now())
	switch state {
	case dedupDone:
		s.stats.duplicates.Add(1)
		// RFC 7252 §4.5: the same answer again for a confirmable request;
		// a duplicate non-confirmable one is silently ignored. A real
		// retransmission is the same datagram; a smaller one reusing the
		// message id from a spoofable address could make the answer an
		// amplifier, so it gets none.
		if con && cached != nil && (!p.spoofable() || len(cached) <= len(b)) {
			p.send(cached)
		}
		return
	case dedupPending:
		// The first copy is being stored; its answer will go out when the
		// append is durable, and answers this retransmission too.
		s.stats.duplicates.Add(1)
		return
	}
	req := &request{code: m.Code, token: m.Token, opts: m.Options, payload: m.Payload, con: con, size: len(b), peer: p}
	suppress, _ := optionUint(m.Options, message.NoResponse)
	s.serve(req, func(r response) {
		out := s.encodeAnswer(req, r, mid, suppress)
		if r.code == codes.ServiceUnavailable {
			// A refusal changes nothing: a retransmission is handled anew.
			s.dedup.forget(ticket)
		} else {
			s.dedup.finish(ticket, out)
		}
		if out != nil {
			p.send(out)
		}
	})
}

// encodeAnswer encodes the answer to a datagram request, or returns nil
// when the client asked for none. On plain UDP the answer is cut (payload
// first, then options) until it is no larger than the request.
func (s *Server) encodeAnswer(req *request, r response, mid uint16, suppress uint32) []byte {
	class := uint32(r.code) >> 5
	if (class == 2 && suppress&noResponse2xx != 0) || (class == 4 && suppress&noResponse4xx != 0) ||
		(class == 5 && suppress&noResponse5xx != 0) {
		if !req.con {
			return nil
		}
		// The message layer still needs its ACK.
		return encodeDatagram(message.Message{Type: message.Acknowledgement, MessageID: int32(mid)})
	}
	m := message.Message{Token: req.token, Code: r.code, Options: r.opts, Payload: r.payload,
		Type: message.Acknowledgement, MessageID: int32(mid)}
	if !req.con {
		m.Type, m.MessageID = message.NonConfirmable, int32(s.nextMID())
	}
	out := encodeDatagram(m)
	if req.peer.spoofable() && len(out) > req.size {
		m.Payload = nil
		out = encodeDatagram(m)
		if len(out) > req.size {
			m.Options = nil
			out = encodeDatagram(m)
		}
	}
	return out
}

func (s *Server) nextMID() uint16 { return uint16(s.mid.Add(1)) }

// resetFor is the Reset for message id mid: 4 bytes, never larger than
// what it answers.
func resetFor(mid uint16) []byte {
	return []byte{0x70, 0, byte(mid >> 8), byte(mid)}
}
