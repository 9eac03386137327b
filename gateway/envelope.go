package gateway

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"reflect"
	"sort"
	"sync"
	"time"
	"unicode/utf8"
	"unsafe"
)

// Header names every record carries; MQTT 5 user properties follow them
// under their own names.
const (
	HeaderID          = "iotgw-id"
	HeaderDevice      = "iotgw-device"
	HeaderStream      = "iotgw-stream"
	HeaderProtocol    = "iotgw-protocol"
	HeaderTopic       = "iotgw-topic"
	HeaderReceivedAt  = "iotgw-received-at"
	HeaderGateway     = "iotgw-gateway"
	HeaderContentType = "content-type"
	HeaderRefStale    = "iotgw-ref-stale"
	HeaderRefPrefix   = "iotgw-ref-" // raw routes: one header per top-level ref field
	HeaderError       = "iotgw-error"
	HeaderDLQTopic    = "iotgw-dlq-topic" // the topic the record was meant for
)

// BuildMessage turns a routed record into a Kafka message: key, value in
// the route's format, and the metadata headers. The key and the header
// values share one allocation (see appendHeaders).
func BuildMessage(rec *Record, rt Routed, gatewayID string, off Offset) Message {
	return buildMessage(nil, rec, rt, gatewayID, off)
}

// buildMessage is BuildMessage with the message's memory from a (see arena).
func buildMessage(a *arena, rec *Record, rt Routed, gatewayID string, off Offset) Message {
	m := Message{Topic: rt.Topic, Offset: off}
	var receivedAt []byte
	m.Headers, m.Key, receivedAt = appendHeaders(a, a.takeHeaders(9+len(rec.Properties)), rec, gatewayID, rt.Key)
	if rt.Format == FormatRaw {
		m.Value = rec.Payload
		m.Headers = appendRefHeaders(m.Headers, rec)
		a.keepHeaders(m.Headers)
		return m
	}
	a.keepHeaders(m.Headers)
	var ref []byte
	if rec.Ref != nil {
		ref = refJSON(rec.Ref)
	}
	size := 192 + len(rec.Topic) + len(rec.Payload)*4/3 + len(ref)
	m.Value = appendEnvelope(a.take(size), rec, ref, receivedAt)
	a.keep(m.Value)
	return m
}

// DeadLetter builds the dead-letter message for a record that could not be
// routed or delivered: the device's payload unchanged, the metadata headers,
// the error and the topic it was meant for.
func DeadLetter(rec *Record, dlqTopic, intended string, cause error, gatewayID string, off Offset) Message {
	m := Message{Topic: dlqTopic, Value: rec.Payload, Offset: off}
	m.Headers, m.Key, _ = appendHeaders(nil, make([]Header, 0, 10+len(rec.Properties)), rec, gatewayID, rec.Device)
	m.Headers = append(m.Headers, Header{HeaderError, []byte(cause.Error())})
	if intended != "" {
		m.Headers = append(m.Headers, Header{HeaderDLQTopic, []byte(intended)})
	}
	return m
}

// appendHeaders appends the metadata headers of rec to h, and returns them
// with key as bytes and the formatted received-at time (the header's value,
// for the envelope to reuse). The values (and key) are copied into one slab rather
// than converted one by one: a record's headers cost one allocation instead
// of eight, at 100k records a second (none, from an arena a). Kafka only
// reads them.
func appendHeaders(a *arena, h []Header, rec *Record, gatewayID, key string) (hs []Header, k, receivedAt []byte) {
	n := len(key) + len(rec.ID) + len(rec.Device) + len(rec.Protocol) + len(rec.Topic) + len(time.RFC3339Nano) +
		len(gatewayID) + len(rec.Stream) + len(rec.ContentType)
	for _, p := range rec.Properties {
		n += len(p.Value)
	}
	room := a.take(n)
	slab := room
	// put copies v into the slab and adds it as header name; the full
	// slice expression keeps a later append from writing into it.
	put := func(name, v string) {
		start := len(slab)
		slab = append(slab, v...)
		h = append(h, Header{name, slab[start:len(slab):len(slab)]})
	}
	slab = append(slab, key...)
	k = slab[:len(slab):len(slab)]
	put(HeaderID, rec.ID)
	put(HeaderDevice, rec.Device)
	put(HeaderProtocol, rec.Protocol)
	put(HeaderTopic, rec.Topic)
	start := len(slab)
	slab = rec.ReceivedAt.UTC().AppendFormat(slab, time.RFC3339Nano)
	receivedAt = slab[start:len(slab):len(slab)]
	h = append(h, Header{HeaderReceivedAt, receivedAt})
	put(HeaderGateway, gatewayID)
	if rec.Stream != "" {
		put(HeaderStream, rec.Stream)
	}
	if rec.ContentType != "" {
		put(HeaderContentType, rec.ContentType)
	}
	if rec.RefStale {
		h = append(h, Header{HeaderRefStale, []byte("true")})
	}
	for _, p := range rec.Properties {
		put(p.Key, p.Value)
	}
	// The header values point into the room: it is kept whole, even if an
	// append had outgrown it (n is an upper bound, so none does).
	a.keep(room[:n])
	return h, k, receivedAt
}

func appendRefHeaders(h []Header, rec *Record) []Header {
	keys := make([]string, 0, len(rec.Ref))
	for k := range rec.Ref {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		var v []byte
		switch x := rec.Ref[k].(type) {
		case string:
			v = []byte(x)
		default:
			v, _ = json.Marshal(x)
		}
		h = append(h, Header{HeaderRefPrefix + k, v})
	}
	return h
}

// AppendEnvelope appends the JSON envelope of rec to dst:
// {"id","device","stream","protocol","topic","received_at","payload"|"payload_b64","ref","ref_stale"}.
// A payload that is valid JSON is embedded as it is; anything else is
// base64 under payload_b64, so the envelope is always valid JSON.
func AppendEnvelope(dst []byte, rec *Record) []byte {
	var ref []byte
	if rec.Ref != nil {
		ref = refJSON(rec.Ref)
	}
	return appendEnvelope(dst, rec, ref, nil)
}

// appendEnvelope is AppendEnvelope with rec.Ref already encoded (ref, nil
// when there is none), so a message looks the encoding up once, and with
// rec.ReceivedAt already formatted as RFC 3339 (receivedAt; nil formats
// it), so a message formats it once.
func appendEnvelope(dst []byte, rec *Record, ref, receivedAt []byte) []byte {
	dst = append(dst, `{"id":`...)
	dst = appendJSONString(dst, rec.ID)
	dst = append(dst, `,"device":`...)
	dst = appendJSONString(dst, rec.Device)
	if rec.Stream != "" {
		dst = append(dst, `,"stream":`...)
		dst = appendJSONString(dst, rec.Stream)
	}
	dst = append(dst, `,"protocol":`...)
	dst = appendJSONString(dst, rec.Protocol)
	dst = append(dst, `,"topic":`...)
	dst = appendJSONString(dst, rec.Topic)
	dst = append(dst, `,"received_at":"`...)
	if receivedAt != nil {
		dst = append(dst, receivedAt...)
	} else {
		dst = rec.ReceivedAt.UTC().AppendFormat(dst, time.RFC3339Nano)
	}
	dst = append(dst, '"')
	if len(rec.Payload) > 0 && validJSON(rec.Payload) {
		dst = append(dst, `,"payload":`...)
		dst = appendCompactJSON(dst, rec.Payload)
	} else {
		dst = append(dst, `,"payload_b64":"`...)
		dst = base64.StdEncoding.AppendEncode(dst, rec.Payload)
		dst = append(dst, '"')
	}
	if ref != nil {
		dst = append(dst, `,"ref":`...)
		dst = append(dst, ref...)
	}
	if rec.RefStale {
		dst = append(dst, `,"ref_stale":true`...)
	}
	return append(dst, '}')
}

// appendCompactJSON embeds valid JSON, dropping the whitespace around it;
// inner whitespace is kept as the device sent it (newlines inside a value
// would otherwise break line-oriented consumers, so those are compacted).
func appendCompactJSON(dst, js []byte) []byte {
	start, end := 0, len(js)
	for start < end && isSpace(js[start]) {
		start++
	}
	for end > start && isSpace(js[end-1]) {
		end--
	}
	body := js[start:end]
	if bytes.IndexByte(body, '\n') >= 0 || bytes.IndexByte(body, '\r') >= 0 {
		if out, err := compact(dst, body); err == nil {
			return out
		}
	}
	return append(dst, body...)
}

func compact(dst, js []byte) ([]byte, error) {
	b := bytes.NewBuffer(dst)
	err := json.Compact(b, js)
	return b.Bytes(), err
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

const hexDigits = "0123456789abcdef"

// plainJSON marks the bytes a JSON string holds as they are: ASCII from
// space up, except the quote and the backslash.
var plainJSON = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// appendJSONString quotes s as a JSON string; invalid UTF-8 becomes U+FFFD.
// Runs of plain bytes (device ids, topics, all of them usually) are copied
// whole.
func appendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	for i := 0; i < len(s); {
		j := i
		for j < len(s) && plainJSON[s[j]] {
			j++
		}
		dst = append(dst, s[i:j]...)
		if i = j; i == len(s) {
			break
		}
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				dst = append(dst, '\\', c)
			case c < 0x20:
				switch c {
				case '\n':
					dst = append(dst, '\\', 'n')
				case '\r':
					dst = append(dst, '\\', 'r')
				case '\t':
					dst = append(dst, '\\', 't')
				default:
					dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&15])
				}
			default:
				dst = append(dst, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, `\ufffd`...)
		} else if r == '\u2028' || r == '\u2029' {
			dst = append(dst, `\u202`...)
			dst = append(dst, hexDigits[r&15])
		} else {
			dst = append(dst, s[i:i+size]...)
		}
		i += size
	}
	return append(dst, '"')
}

// refCache remembers the JSON of Ref maps. Enrichers share one read-only
// map between all records of a device, so encoding it once instead of per
// record is most of what enrichment costs the pipeline. An entry keeps its
// map alive, so the map's address cannot be reused by another map while
// the entry exists; a changed reference is a new map, hence a new entry.
var refCache = struct {
	sync.Mutex
	m map[unsafe.Pointer]refEntry
}{m: map[unsafe.Pointer]refEntry{}}

type refEntry struct {
	ref  map[string]any
	json []byte
}

const refCacheMax = 8192

func refJSON(ref map[string]any) []byte {
	key := reflect.ValueOf(ref).UnsafePointer()
	refCache.Lock()
	e, ok := refCache.m[key]
	refCache.Unlock()
	if ok {
		return e.json
	}
	b, err := json.Marshal(ref)
	if err != nil {
		return nil
	}
	refCache.Lock()
	if len(refCache.m) >= refCacheMax {
		clear(refCache.m)
	}
	refCache.m[key] = refEntry{ref: ref, json: b}
	refCache.Unlock()
	return b
}
