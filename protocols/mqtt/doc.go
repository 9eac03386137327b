// Package mqtt is the MQTT front door: an embedded mochi-mqtt broker
// (3.1.1 and 5.0) on TCP, TLS and WebSocket listeners, whose hooks admit
// and authenticate devices, check topics against the ACL, turn each PUBLISH
// into a gateway.Record and append it to the durable buffer, and which
// delivers downlink commands (gateway.CommandTarget).
//
// Acknowledgement rule: a QoS 1 PUBACK or QoS 2 PUBREC is written only after
// the buffer reported the record durable. The hook returns
// packets.ErrRejectPacket so mochi writes nothing itself, and the ack is
// queued per connection; acks leave in the order the PUBLISHes arrived
// (MQTT requires it), released by the buffer's group commit, so one
// connection with many messages in flight shares fsyncs instead of waiting
// for one per message. Only then is the message handed back to mochi for
// local subscribers and the retained store, with its MQTT 5 properties and
// its origin (No Local): the embedded broker keeps working as a broker
// (retained messages, wills, sessions, shared subscriptions, topic
// aliases), and a local subscriber never sees a message the gateway could
// still lose. Because the hook rejects the PUBLISH, mochi reads the next one
// into the same memory (ReuseRejectedPublishBodies): what the hook keeps
// for that later hand-back is a copy that shares none of it (detach).
//
// When the buffer is full: MQTT 5 clients get PUBACK/PUBREC with reason 0x97
// (quota exceeded); MQTT 3.1.1 clients have their reads paused (the hook
// waits on the client's read loop, so TCP backpressure reaches the device)
// until space frees; QoS 0 is dropped and counted. Nothing acknowledged is
// ever dropped, and no error falls through to a success ack. A client with
// receive_maximum messages unacknowledged has its reads paused the same
// way, so one connection's queue of pending acks is bounded.
//
// Per-device rate (mqtt.max_rate, a token bucket per device identity that
// survives reconnects): over it, MQTT 5 gets 0x96 (message rate too high)
// in its turn among the acks, MQTT 3.1.1 is paused until the budget allows,
// QoS 0 is dropped and counted.
//
// Identity: in registry mode a device proves its id with a client
// certificate (common name or DNS SAN) or with username and password, and
// the client id must be that id, so no other identity can take over its
// session; a will must go to a topic the device may publish to. See
// OnConnectAuthenticate. In open mode the identity is the client id.
//
// Connections: every listener is the gateway's own, so a connection that
// has not sent its CONNECT (TLS handshake and WebSocket upgrade included)
// within connect_timeout is closed, max_connections is enforced atomically
// from CONNECT until the socket closes, and a panic in mochi's packet
// decoding closes that connection only (mochi v2.7.9 panics on a truncated
// MQTT 5 SUBSCRIBE). Keep-alive is mochi's: 1.5 times the client's
// keep-alive without a packet closes the connection.
//
// Other mochi v2.7.9 defects worked around here: its listeners stop
// accepting for good after one failed accept (out of file descriptors);
// closing a listener can deadlock while clients disconnect
// (mochiListener.Close); a session takeover racing with the old
// connection's teardown can drop the new client from mochi's clients map
// (keepClientKnown).
//
// Downlink: Deliver writes a command's PUBLISH straight to the device's
// connection and returns once its PUBACK is read; see commands.go.
package mqtt
