package simulator

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/mochi-mqtt/server/v2/packets"
)

// maxIncomingPacket bounds what the client reads from a broker: it only
// expects acknowledgements, CONNACK and DISCONNECT, which are small.
const maxIncomingPacket = 64 << 10

// readPacket reads one MQTT packet a broker may send to a client. Bytes
// that do not form such a packet give an error wrapping ErrProtocol (or
// ErrPacketTooLarge); a connection that ends mid-packet gives
// io.ErrUnexpectedEOF. It never panics on any input.
func readPacket(r *bufio.Reader, version byte) (packets.Packet, error) {
	fh, err := readHeader(r)
	if err != nil {
		return packets.Packet{FixedHeader: fh}, err
	}
	return readBody(r, fh, version)
}

// readHeader reads a packet's fixed header: its type, flags and remaining
// length, with readPacket's errors.
func readHeader(r *bufio.Reader) (fh packets.FixedHeader, err error) {
	b, err := r.ReadByte()
	if err != nil {
		return fh, err
	}
	if err := fh.Decode(b); err != nil {
		return fh, fmt.Errorf("%w: fixed header 0x%02x: %v", ErrProtocol, b, err)
	}
	n, _, err := packets.DecodeLength(r)
	if err != nil {
		switch {
		case errors.Is(err, packets.ErrMalformedVariableByteInteger):
			return fh, fmt.Errorf("%w: remaining length: %v", ErrProtocol, err)
		case errors.Is(err, io.EOF):
			return fh, io.ErrUnexpectedEOF
		}
		return fh, err
	}
	if n > maxIncomingPacket {
		return fh, fmt.Errorf("%w: %s of %d bytes", ErrPacketTooLarge, packetName(fh.Type), n)
	}
	fh.Remaining = n
	return fh, nil
}

// readBody reads the rest of the packet whose fixed header is fh.
func readBody(r *bufio.Reader, fh packets.FixedHeader, version byte) (pk packets.Packet, err error) {
	pk.FixedHeader = fh
	pk.ProtocolVersion = version
	body := make([]byte, fh.Remaining)
	if _, err := io.ReadFull(r, body); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return pk, err
	}
	if err := decodeBody(&pk, body); err != nil {
		return pk, fmt.Errorf("%w: %s: %v", ErrProtocol, packetName(fh.Type), err)
	}
	return pk, nil
}

// incoming is what the client uses of a packet from the broker.
type incoming struct {
	typ, qos byte // from the fixed header
	id       uint16
	reason   byte
}

// readIncoming reads one packet like readPacket, with its errors. A
// PUBACK, PUBREC, PUBREL or PUBCOMP without properties, nearly all that a
// broker sends, it decodes as mochi does (the packet id, and the reason
// code that MQTT 5 may add) without building a packets.Packet or
// allocating.
func readIncoming(r *bufio.Reader, version byte) (incoming, error) {
	fh, err := readHeader(r)
	if err != nil {
		return incoming{}, err
	}
	in := incoming{typ: fh.Type, qos: fh.Qos}
	switch fh.Type {
	case packets.Puback, packets.Pubrec, packets.Pubrel, packets.Pubcomp:
		if fh.Remaining == 2 || fh.Remaining == 3 && version == mqttV5 {
			var b [3]byte
			for i := range fh.Remaining {
				if b[i], err = r.ReadByte(); err != nil {
					if errors.Is(err, io.EOF) {
						err = io.ErrUnexpectedEOF
					}
					return incoming{}, err
				}
			}
			in.id, in.reason = uint16(b[0])<<8|uint16(b[1]), b[2]
			return in, nil
		}
	}
	pk, err := readBody(r, fh, version)
	if err != nil {
		return incoming{}, err
	}
	in.id, in.reason = pk.PacketID, pk.ReasonCode
	return in, nil
}

// decodeBody decodes the packets a server sends. mochi's decoders are
// written for its own server side; recover keeps a decoder bug on hostile
// input from taking the simulator down with it.
func decodeBody(pk *packets.Packet, body []byte) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("malformed packet: %v", r)
		}
	}()
	switch pk.FixedHeader.Type {
	case packets.Connack:
		return pk.ConnackDecode(body)
	case packets.Publish:
		return pk.PublishDecode(body)
	case packets.Puback:
		return pk.PubackDecode(body)
	case packets.Pubrec:
		return pk.PubrecDecode(body)
	case packets.Pubrel:
		return pk.PubrelDecode(body)
	case packets.Pubcomp:
		return pk.PubcompDecode(body)
	case packets.Suback:
		return pk.SubackDecode(body)
	case packets.Unsuback:
		return pk.UnsubackDecode(body)
	case packets.Pingresp:
		return nil
	case packets.Disconnect:
		return pk.DisconnectDecode(body)
	case packets.Auth:
		return pk.AuthDecode(body)
	}
	return errors.New("not a packet a server sends")
}

func packetName(t byte) string {
	if n, ok := packets.PacketNames[t]; ok {
		return n
	}
	return fmt.Sprintf("packet type %d", t)
}

// v5JSONProperties are the MQTT 5 properties of every simulated publish:
// payload format indicator 1 (UTF-8) and content type application/json.
var v5JSONProperties = []byte{0x01, 0x01, 0x03, 0x00, 0x10, 'a', 'p', 'p', 'l', 'i', 'c', 'a', 't', 'i', 'o', 'n', '/', 'j', 's', 'o', 'n'}

// appendPublish appends a PUBLISH packet for topic prefix+stream (MQTT 5:
// with v5JSONProperties) to b. It is what encodePacket makes of the same
// packet, without building a packets.Packet and its generic property
// encoder per message: the load generator shares the CPU with the gateway
// it measures.
func appendPublish(b []byte, qos byte, id uint16, prefix, stream string, payload []byte, v5 bool) []byte {
	rem := 2 + len(prefix) + len(stream) + len(payload)
	if qos > 0 {
		rem += 2
	}
	if v5 {
		rem += 1 + len(v5JSONProperties)
	}
	b = append(b, packets.Publish<<4|qos<<1)
	for { // remaining length, a varint
		c := byte(rem % 128)
		rem /= 128
		if rem > 0 {
			c |= 0x80
		}
		b = append(b, c)
		if rem == 0 {
			break
		}
	}
	n := len(prefix) + len(stream)
	b = append(b, byte(n>>8), byte(n))
	b = append(append(b, prefix...), stream...)
	if qos > 0 {
		b = append(b, byte(id>>8), byte(id))
	}
	if v5 {
		b = append(b, byte(len(v5JSONProperties)))
		b = append(b, v5JSONProperties...)
	}
	return append(b, payload...)
}

// encodePacket encodes a packet the client sends.
func encodePacket(pk *packets.Packet) ([]byte, error) {
	var buf bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&buf)
	case packets.Publish:
		err = pk.PublishEncode(&buf)
	case packets.Puback:
		err = pk.PubackEncode(&buf)
	case packets.Pubrec:
		err = pk.PubrecEncode(&buf)
	case packets.Pubrel:
		err = pk.PubrelEncode(&buf)
	case packets.Pubcomp:
		err = pk.PubcompEncode(&buf)
	case packets.Pingreq:
		err = pk.PingreqEncode(&buf)
	case packets.Disconnect:
		err = pk.DisconnectEncode(&buf)
	default:
		return nil, fmt.Errorf("%w: cannot encode %s", ErrProtocol, packetName(pk.FixedHeader.Type))
	}
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", packetName(pk.FixedHeader.Type), err)
	}
	return buf.Bytes(), nil
}

// connectReturnText explains CONNACK codes of MQTT 3.1.1 (1-5) and MQTT 5
// (0x80 and up).
func connectReturnText(version byte, code byte) string {
	if version == mqttV311 {
		switch code {
		case 1:
			return "unacceptable protocol version"
		case 2:
			return "identifier rejected"
		case 3:
			return "server unavailable"
		case 4:
			return "bad user name or password"
		case 5:
			return "not authorized"
		}
		return fmt.Sprintf("return code %d", code)
	}
	return reasonText(code)
}

// reasonText names an MQTT 5 reason code.
func reasonText(code byte) string {
	names := map[byte]string{
		0x80: "unspecified error", 0x81: "malformed packet", 0x82: "protocol error",
		0x83: "implementation specific error", 0x84: "unsupported protocol version",
		0x85: "client identifier not valid", 0x86: "bad user name or password",
		0x87: "not authorized", 0x88: "server unavailable", 0x89: "server busy",
		0x8A: "banned", 0x8B: "server shutting down", 0x8C: "bad authentication method",
		0x8D: "keep alive timeout", 0x8E: "session taken over", 0x90: "topic name invalid",
		0x93: "receive maximum exceeded", 0x95: "packet too large", 0x97: "quota exceeded",
		0x99: "payload format invalid", 0x9C: "use another server", 0x9D: "server moved",
		0x9F: "connection rate exceeded",
	}
	if n, ok := names[code]; ok {
		return fmt.Sprintf("%s (0x%02X)", n, code)
	}
	return fmt.Sprintf("reason code 0x%02X", code)
}
