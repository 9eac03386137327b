// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2022 mochi-mqtt, mochi-co
// SPDX-FileContributor: iotgw

package mqtt

import (
	"bufio"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/stretchr/testify/require"
)

// TestIdleClientStack checks what an idle client costs in goroutine stacks:
// one read goroutine, whose stack handling CONNECT, SUBSCRIBE (with a
// retained message to send) and PINGREQ fits in 8 KiB, or at least shrinks
// back to 8 KiB once the client is idle. Passing packets by value on the
// read path took it to 16 KiB for good, and a writer goroutine per client
// added 4 KiB.
func TestIdleClientStack(t *testing.T) {
	s := New(&Options{Logger: logger, InlineClient: true})
	require.NoError(t, s.AddHook(new(AllowHook), nil))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	require.NoError(t, s.AddListener(listeners.NewNet("stack", ln)))
	require.NoError(t, s.Serve())
	defer s.Close()
	require.NoError(t, s.Publish("a/b/c", []byte("retained"), true, 0))

	const clients = 200
	before := stackInuse()
	for i := 0; i < clients; i++ {
		c, err := net.Dial("tcp", ln.Addr().String())
		require.NoError(t, err)
		defer c.Close()
		r := bufio.NewReader(c)
		// MQTT 3.1.1 CONNECT, clean session, keep-alive 60 s, the server
		// assigns the client id.
		exchange(t, c, r, []byte{0x10, 12, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 60, 0, 0}, packets.Connack)
		exchange(t, c, r, []byte{0x82, 10, 0, 1, 0, 5, 'a', '/', 'b', '/', 'c', 0}, packets.Suback)
		expect(t, c, r, packets.Publish) // the retained message
		exchange(t, c, r, []byte{0xc0, 0}, packets.Pingresp)
	}
	perClient := float64(stackInuse()-before) / clients
	t.Logf("goroutine stacks: %.0f bytes per idle client", perClient)
	require.Less(t, perClient, 10240.0)
}

// stackInuse returns the bytes in goroutine stacks after two collections:
// a collection halves a stack that is less than a quarter used, once.
func stackInuse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.StackInuse
}

// exchange writes a packet and reads the reply, which must be of type want.
func exchange(t testing.TB, c net.Conn, r *bufio.Reader, pk []byte, want byte) {
	t.Helper()
	_, err := c.Write(pk)
	require.NoError(t, err)
	expect(t, c, r, want)
}

// expect reads a packet, which must be of type want.
func expect(t testing.TB, c net.Conn, r *bufio.Reader, want byte) {
	t.Helper()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
	b, err := r.ReadByte()
	require.NoError(t, err)
	require.Equal(t, want, b>>4)
	n, _, err := packets.DecodeLength(r)
	require.NoError(t, err)
	_, err = r.Discard(n)
	require.NoError(t, err)
}
