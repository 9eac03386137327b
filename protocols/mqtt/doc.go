// Package mqtt is the MQTT front door: an embedded mochi-mqtt broker
// (3.1.1 and 5.0) whose hooks authenticate devices, check topics against
// the ACL, turn each PUBLISH into a gateway.Record and append it to the
// durable buffer.
//
// Acknowledgement rule: a QoS 1 PUBACK or QoS 2 PUBREC is written only after
// the buffer reported the record durable. The hook returns
// packets.ErrRejectPacket so mochi writes nothing itself, and the ack is
// queued per connection; acks leave in the order the PUBLISHes arrived
// (MQTT requires it), released by the buffer's group commit, so one
// connection with many messages in flight shares fsyncs instead of waiting
// for one per message.
//
// When the buffer is full: MQTT 5 clients get PUBACK/PUBREC with reason 0x97
// (quota exceeded); MQTT 3.1.1 clients have their reads paused (the hook
// waits on the client's read loop, so TCP backpressure reaches the device)
// until space frees; QoS 0 is dropped and counted. Nothing acknowledged is
// ever dropped, and no error falls through to a success ack.
package mqtt
