package simulator

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
)

func encodeTest(t testing.TB, pk packets.Packet) []byte {
	t.Helper()
	var buf bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackEncode(&buf)
	case packets.Suback:
		err = pk.SubackEncode(&buf)
	default:
		var b []byte
		b, err = encodePacket(&pk)
		buf.Write(b)
	}
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestReadPacket(t *testing.T) {
	puback5 := encodeTest(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: 7, ReasonCode: 0x97, ProtocolVersion: 5})
	connack := encodeTest(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}, SessionPresent: true, ProtocolVersion: 4})
	connect := encodeTest(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 4,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), ClientIdentifier: "x"}})
	tests := []struct {
		name    string
		in      []byte
		version byte
		check   func(packets.Packet) bool
		err     error
	}{
		{"puback v5 with reason", puback5, 5, func(p packets.Packet) bool { return p.PacketID == 7 && p.ReasonCode == 0x97 }, nil},
		{"connack v3", connack, 4, func(p packets.Packet) bool { return p.SessionPresent && p.ReasonCode == 0 }, nil},
		{"pingresp", []byte{0xd0, 0}, 4, func(p packets.Packet) bool { return p.FixedHeader.Type == packets.Pingresp }, nil},
		{"eof", nil, 4, nil, io.EOF},
		{"truncated body", puback5[:len(puback5)-1], 5, nil, io.ErrUnexpectedEOF},
		{"truncated length", []byte{0x40, 0x80}, 4, nil, io.ErrUnexpectedEOF},
		{"length over 4 bytes", []byte{0x40, 0xff, 0xff, 0xff, 0xff, 0x7f}, 4, nil, ErrProtocol},
		{"too large", []byte{0x30, 0xff, 0xff, 0x7f}, 4, nil, ErrPacketTooLarge},
		{"bad flags", []byte{0x41, 0x02, 0, 1}, 4, nil, ErrProtocol},
		{"connect from a server", connect, 4, nil, ErrProtocol},
		{"puback too short", []byte{0x40, 0x01, 0}, 4, nil, ErrProtocol},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pk, err := readPacket(bufio.NewReader(bytes.NewReader(tt.in)), tt.version)
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("err = %v, want %v", err, tt.err)
				}
				return
			}
			if err != nil || !tt.check(pk) {
				t.Fatalf("got %+v, %v", pk, err)
			}
		})
	}
}

// FuzzReadPacket feeds arbitrary bytes to the client's packet readers, as
// a broken or hostile broker could: they must return errors, never panic,
// and readIncoming must read what readPacket reads.
func FuzzReadPacket(f *testing.F) {
	f.Add([]byte{0x40, 0x02, 0x00, 0x01}, true)
	f.Add([]byte{0x20, 0x03, 0x00, 0x00, 0x00}, true)
	f.Add([]byte{0x50, 0x04, 0x00, 0x01, 0x97, 0x00}, true)
	f.Add([]byte{0x40, 0x05, 0x00, 0x01, 0x80, 0x03, 0x1f}, true) // truncated properties
	f.Add([]byte{0xe0, 0x02, 0x8e, 0x00}, true)
	f.Add([]byte{0x30, 0x07, 0x00, 0x01, 'a', 0x05, 0x01, 0x01, 0x00}, true)
	f.Add([]byte{0x90, 0x04, 0x00, 0x01, 0x00, 0x01}, false)
	f.Add([]byte{0xb0, 0x03, 0x00, 0x01, 0x02}, true)  // truncated v5 UNSUBACK properties
	f.Add([]byte{0x40, 0x03, 0x00, 0x01, 0x97}, false) // v3.1.1 ignores a reason code
	f.Add([]byte{0x62, 0x03, 0x00, 0x01, 0x92, 0x70, 0x02, 0x00, 0x01}, true)
	f.Add([]byte{0x50, 0x03, 0x00, 0x01}, true) // truncated reason code
	f.Fuzz(func(t *testing.T, data []byte, v5 bool) {
		version := mqttV311
		if v5 {
			version = mqttV5
		}
		r := bufio.NewReader(bytes.NewReader(data))
		ri := bufio.NewReader(bytes.NewReader(data))
		for i := 0; i < 64; i++ {
			pk, err := readPacket(r, version)
			in, ierr := readIncoming(ri, version)
			if fmt.Sprint(err) != fmt.Sprint(ierr) {
				t.Fatalf("packet %d: readPacket: %v, readIncoming: %v", i, err, ierr)
			}
			if err != nil {
				return
			}
			want := incoming{pk.FixedHeader.Type, pk.FixedHeader.Qos, pk.PacketID, pk.ReasonCode}
			if in != want {
				t.Fatalf("packet %d: readIncoming %+v, readPacket %+v", i, in, want)
			}
		}
	})
}

// appendPublish makes the same bytes as mochi's encoder, for both protocol
// versions, every QoS, and payloads around the remaining-length varint's
// one-, two- and three-byte boundaries.
func TestAppendPublishMatchesMochi(t *testing.T) {
	for _, v5 := range []bool{false, true} {
		for qos := byte(0); qos <= 2; qos++ {
			for _, n := range []int{0, 1, 90, 127, 128, 300, 16383, 16384, 70000} {
				payload := bytes.Repeat([]byte{'x'}, n)
				pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos}, TopicName: "devices/truck-0001/position", Payload: payload, ProtocolVersion: 4}
				if qos > 0 {
					pk.PacketID = 513
				}
				if v5 {
					pk.ProtocolVersion = 5
					pk.Properties.ContentType = "application/json"
					pk.Properties.PayloadFormat = 1
					pk.Properties.PayloadFormatFlag = true
				}
				want, err := encodePacket(&pk)
				if err != nil {
					t.Fatal(err)
				}
				got := appendPublish(nil, qos, pk.PacketID, "devices/truck-0001/", "position", payload, v5)
				if !bytes.Equal(got, want) {
					t.Fatalf("v5 %v qos %d payload %d: got % x\nwant % x", v5, qos, n, got[:min(len(got), 64)], want[:min(len(want), 64)])
				}
			}
		}
	}
}
