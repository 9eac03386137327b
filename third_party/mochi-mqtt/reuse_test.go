// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2022 mochi-mqtt, mochi-co
// SPDX-FileContributor: iotgw

package mqtt

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"runtime"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/stretchr/testify/require"
)

// takeHook takes publishes over as a hook that stores them does: it
// copies what it needs and rejects each (or, with pass, lets each through).
// It also keeps the packets as given, to check that the server reuses the
// body only of those it rejected.
type takeHook struct {
	HookBase
	pass      bool
	processed bool // provides OnPacketProcessed
	quiet     bool // records nothing: allocates nothing
	got       []string
	kept      []packets.Packet
}

func (h *takeHook) ID() string { return "take" }

func (h *takeHook) Provides(b byte) bool {
	return b == OnPublish || b == OnPacketProcessed && h.processed
}

func (h *takeHook) OnPublish(cl *Client, pk packets.Packet) (packets.Packet, error) {
	if h.quiet {
		return pk, errRejectPacket // boxed once
	}
	h.got = append(h.got, pk.TopicName+" "+string(pk.Payload))
	h.kept = append(h.kept, pk)
	if h.pass {
		return pk, nil
	}
	return pk, packets.ErrRejectPacket
}

func (h *takeHook) OnPacketProcessed(cl *Client, pk packets.Packet, err error) {}

// reuseClient returns a server with ReuseRejectedPublishBodies and h, and
// one of its MQTT 5 clients reading stream.
func reuseClient(t testing.TB, h *takeHook, stream []byte) (*Server, *Client) {
	s := New(&Options{Logger: logger, ReuseRejectedPublishBodies: true})
	require.NoError(t, s.AddHook(new(AllowHook), nil))
	require.NoError(t, s.AddHook(h, nil))
	c, _ := net.Pipe()
	t.Cleanup(func() { c.Close() })
	cl := s.NewClient(c, "t", "device", false)
	cl.Properties.ProtocolVersion = 5
	cl.State.TopicAliases = NewTopicAliases(10)
	cl.State.Inflight.ResetReceiveQuota(100)
	cl.Net.bconn = bufio.NewReader(bytes.NewReader(stream))
	return s, cl
}

// qos0Publish encodes an MQTT 5 QoS 0 PUBLISH.
func qos0Publish(t testing.TB, topic string, alias uint16, payload string) []byte {
	p := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Publish},
		TopicName:       topic,
		Payload:         []byte(payload),
		ProtocolVersion: 5,
	}
	if alias > 0 {
		p.Properties.TopicAlias, p.Properties.TopicAliasFlag = alias, true
	}
	var buf bytes.Buffer
	require.NoError(t, p.PublishEncode(&buf))
	return buf.Bytes()
}

// receive reads and processes the client's next packet as the read loop
// does.
func receive(t testing.TB, s *Server, cl *Client) {
	var fh packets.FixedHeader
	require.NoError(t, cl.ReadFixedHeader(&fh))
	require.NoError(t, s.receiveNext(cl, &fh))
}

// TestServerReuseRejectedPublishBodies checks which publish bodies the
// server reuses: those a hook rejected, and then no allocation is left per
// publish; never those of a packet a hook let through, or that
// OnPacketProcessed hooks are to see. A topic alias set by a rejected
// publish outlives its body.
func TestServerReuseRejectedPublishBodies(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1)) // one P: the pool gives back what was put
	const n = 3
	var stream []byte
	var want []string
	for i := 0; i < n; i++ {
		topic, payload := fmt.Sprintf("devices/d%d/telemetry", i), fmt.Sprintf(`{"seq":%d,"fill":"%0100d"}`, i, i)
		stream = append(stream, qos0Publish(t, topic, 0, payload)...)
		want = append(want, topic+" "+payload)
	}

	for _, tc := range []struct {
		name            string
		pass, processed bool
		reused          bool
	}{
		{name: "rejected", reused: true},
		{name: "let through", pass: true},
		{name: "rejected, OnPacketProcessed hooks", processed: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := &takeHook{pass: tc.pass, processed: tc.processed}
			s, cl := reuseClient(t, h, stream)
			for i := 0; i < n; i++ {
				receive(t, s, cl)
			}
			require.Equal(t, want, h.got, "what the hook saw while it ran")
			var kept []string
			for _, pk := range h.kept {
				kept = append(kept, pk.TopicName+" "+string(pk.Payload))
			}
			if tc.reused {
				require.NotEqual(t, want, kept, "the first bodies were not reused for the later publishes")
			} else {
				require.Equal(t, want, kept, "a kept packet changed")
			}
		})
	}

	t.Run("topic alias", func(t *testing.T) {
		stream := append(qos0Publish(t, "devices/d1/telemetry", 1, `{"a":1}`), qos0Publish(t, "", 1, `{"aaaaaaaaaaaaaaaaaaaaaaaaaaaaa":2}`)...)
		h := new(takeHook)
		s, cl := reuseClient(t, h, stream)
		receive(t, s, cl)
		receive(t, s, cl)
		require.Equal(t, []string{`devices/d1/telemetry {"a":1}`, `devices/d1/telemetry {"aaaaaaaaaaaaaaaaaaaaaaaaaaaaa":2}`}, h.got)
	})

	t.Run("allocations", func(t *testing.T) {
		pk := qos0Publish(t, "devices/d1/telemetry", 0, `{"t":21.5}`)
		for _, reuse := range []bool{true, false} {
			h := &takeHook{quiet: true}
			s, cl := reuseClient(t, h, nil)
			s.Options.ReuseRejectedPublishBodies = reuse
			cl.Net.bconn = bufio.NewReaderSize(&repeatReader{b: pk}, 2048)
			receive(t, s, cl) // the pool's first body
			allocs := testing.AllocsPerRun(100, func() { receive(t, s, cl) })
			if reuse {
				require.Zero(t, allocs, "allocations per rejected publish")
			} else {
				require.NotZero(t, allocs, "allocations per publish without reuse")
			}
		}
	})
}
