package coap

import (
	"sync"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
)

const (
	// maxTransfers bounds Block1 transfers in progress across all devices;
	// with max_payload each, it bounds their memory.
	maxTransfers = 256
	// blockIdle drops a transfer whose next block did not come: a block
	// may be retransmitted for up to MAX_TRANSMIT_SPAN (45 s).
	blockIdle = 2 * time.Minute
	// szxBERT is the block size exponent RFC 8323 reserves for BERT, which
	// this server does not offer.
	szxBERT = 7
)

// transferKey matches the blocks of one body: same endpoint, same request
// URI and the same Request-Tag (RFC 7959 §2.4, RFC 9175). Tokens may differ
// from block to block.
type transferKey struct {
	ep  epKey
	uri string
	tag string
}

type transfer struct {
	data []byte
	last time.Time
}

// blockAssembler collects Block1 transfers (RFC 7959 §2.5: the server
// stores each block and answers 2.31 Continue until the last one).
type blockAssembler struct {
	mu    sync.Mutex
	max   int
	idle  time.Duration
	m     map[transferKey]*transfer
	swept time.Time
}

func newBlockAssembler(max int, idle time.Duration) *blockAssembler {
	return &blockAssembler{max: max, idle: idle, m: map[transferKey]*transfer{}}
}

// receiveBlock returns the body of req: its payload, or for the last block
// of a Block1 transfer the assembled body and the Block1 option the final
// answer must echo. For any other block it returns the answer to send
// (2.31 Continue, or an error) instead.
func (s *Server) receiveBlock(req *request, path string) ([]byte, *message.Option, *response) {
	v, ok := optionUint(req.opts, message.Block1)
	if !ok {
		return req.payload, nil, nil
	}
	s.stats.blocks.Add(1)
	num, more, szx := v>>4, v&8 != 0, v&7
	if szx == szxBERT {
		s.stats.badRequests.Add(1)
		r := diag(codes.BadRequest, "BERT unsupported")
		return nil, nil, &r
	}
	size := 1 << (szx + 4)
	if (more && len(req.payload) != size) || len(req.payload) > size {
		s.stats.badRequests.Add(1)
		r := diag(codes.BadRequest, "block size mismatch")
		return nil, nil, &r
	}
	if size1, ok := optionUint(req.opts, message.Size1); ok && int64(size1) > int64(s.opts.MaxPayload) {
		s.stats.tooLarge.Add(1)
		r := s.tooLarge()
		return nil, nil, &r
	}
	key := transferKey{ep: req.peer.endpoint(), uri: path + "?" + queries(req.opts)}
	for _, o := range req.opts {
		if o.ID == message.RequestTag {
			key.tag = string(o.Value)
		}
	}
	data, code := s.blocks.add(key, int(num)*size, more, req.payload, int(s.opts.MaxPayload), s.now())
	echo := uintOption(message.Block1, v)
	switch code {
	case codes.Continue:
		return nil, nil, &response{code: codes.Continue, opts: message.Options{echo}}
	case 0:
		return data, &echo, nil
	case codes.RequestEntityTooLarge:
		s.stats.tooLarge.Add(1)
		r := s.tooLarge()
		return nil, nil, &r
	case codes.ServiceUnavailable:
		s.stats.refusedFull.Add(1)
		r := s.busy("too many transfers")
		return nil, nil, &r
	default:
		s.stats.badRequests.Add(1)
		r := diag(code, "send block 0 first")
		return nil, nil, &r
	}
}

// add stores one block at byte offset off. It returns code 0 and the body
// when the last block completed it, codes.Continue when more are expected,
// or the error code: 4.08 for a block that does not continue a transfer,
// 4.13 past max bytes, 5.03 when too many transfers are open.
func (b *blockAssembler) add(key transferKey, off int, more bool, payload []byte, max int, now time.Time) ([]byte, codes.Code) {
	b.mu.Lock()
	defer b.mu.Unlock()
	t := b.m[key]
	if off == 0 {
		if t == nil {
			if len(b.m) >= b.max || now.Sub(b.swept) > b.idle/4 {
				b.sweep(now)
			}
			if len(b.m) >= b.max {
				return nil, codes.ServiceUnavailable
			}
		}
		// Block 0 (re)starts the body: a device that gave up on a transfer
		// starts over.
		t = &transfer{}
		b.m[key] = t
	}
	if t == nil || off != len(t.data) {
		delete(b.m, key)
		return nil, codes.RequestEntityIncomplete
	}
	if len(t.data)+len(payload) > max {
		delete(b.m, key)
		return nil, codes.RequestEntityTooLarge
	}
	t.data = append(t.data, payload...)
	t.last = now
	if more {
		return nil, codes.Continue
	}
	delete(b.m, key)
	return t.data, 0
}

func (b *blockAssembler) sweep(now time.Time) {
	b.swept = now
	for k, t := range b.m {
		if now.Sub(t.last) > b.idle {
			delete(b.m, k)
		}
	}
}

func (b *blockAssembler) len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.m)
}

// queries joins the Uri-Query options, for matching blocks of one request.
func queries(opts message.Options) string {
	var q []byte
	for _, o := range opts {
		if o.ID == message.URIQuery {
			if len(q) > 0 {
				q = append(q, '&')
			}
			q = append(q, o.Value...)
		}
	}
	return string(q)
}
