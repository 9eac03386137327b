package coap

import (
	"bytes"
	"strings"
	"testing"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	tcpcoder "github.com/plgd-dev/go-coap/v3/tcp/coder"
	udpcoder "github.com/plgd-dev/go-coap/v3/udp/coder"
)

// TestEncodeMatchesGoCoAP: the server's encoders produce exactly the bytes
// go-coap's do, for answers and notifications of every shape.
func TestEncodeMatchesGoCoAP(t *testing.T) {
	msgs := []message.Message{
		{Type: message.Acknowledgement, Code: codes.Changed, MessageID: 0x1234, Token: []byte("tok")},
		{Type: message.Reset, Code: codes.Empty, MessageID: 1},
		{Type: message.Acknowledgement, Code: codes.Empty, MessageID: 65535},
		{Type: message.NonConfirmable, Code: codes.ServiceUnavailable, MessageID: 7, Token: []byte("12345678"),
			Options: message.Options{uintOption(message.MaxAge, 5)}, Payload: []byte("buffer full")},
		{Type: message.Acknowledgement, Code: codes.RequestEntityTooLarge, MessageID: 8,
			Options: message.Options{uintOption(message.Size1, 65536)}, Payload: []byte("too large")},
		{Type: message.Acknowledgement, Code: codes.Continue, MessageID: 9, Token: []byte{1},
			Options: message.Options{uintOption(message.Block1, 0xfffff<<4|8|6)}},
		{Type: message.Confirmable, Code: codes.Content, MessageID: 10, Token: []byte("ob"),
			Options: message.Options{uintOption(message.Observe, 0xffffff), uintOption(message.ContentFormat, 50)}, Payload: []byte(`{"a":1}`)},
		{Type: message.Confirmable, Code: codes.Content, MessageID: 11,
			Options: message.Options{{ID: message.URIPath, Value: []byte(strings.Repeat("p", 300))}, {ID: message.NoResponse, Value: []byte{2}}, {ID: 2000, Value: []byte("x")}},
			Payload: bytes.Repeat([]byte("y"), 70000)},
	}
	for i, m := range msgs {
		want := make([]byte, 100000)
		n, err := udpcoder.DefaultCoder.Encode(m, want)
		if err != nil {
			t.Fatal(err)
		}
		if got := encodeDatagram(m); !bytes.Equal(got, want[:n]) {
			t.Errorf("datagram %d:\n got %x\nwant %x", i, trim(got), trim(want[:n]))
		}
		n, err = tcpcoder.DefaultCoder.Encode(m, want)
		if err != nil {
			t.Fatal(err)
		}
		if got := encodeFrame(m); !bytes.Equal(got, want[:n]) {
			t.Errorf("frame %d:\n got %x\nwant %x", i, trim(got), trim(want[:n]))
		}
	}
	// Unsorted options are encoded in number order.
	m := message.Message{Type: message.Acknowledgement, Code: codes.Content, MessageID: 3,
		Options: message.Options{uintOption(message.ContentFormat, 0), uintOption(message.Observe, 2)}}
	var d message.Message
	d.Options = make(message.Options, 0, 4)
	if _, err := udpcoder.DefaultCoder.Decode(encodeDatagram(m), &d); err != nil || len(d.Options) != 2 || d.Options[0].ID != message.Observe {
		t.Fatalf("decoded %+v, %v", d, err)
	}
	if encodeDatagram(message.Message{Token: make([]byte, 9)}) != nil || encodeFrame(message.Message{Token: make([]byte, 9)}) != nil {
		t.Fatal("a 9-byte token was encoded")
	}
}

func trim(b []byte) []byte {
	if len(b) > 64 {
		return b[:64]
	}
	return b
}
