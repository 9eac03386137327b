// Package coap is the CoAP front door for constrained devices: POST or PUT
// /devices/{device}/{stream} ingests one message with the same routing,
// envelope and durability rule as MQTT, and GET with Observe on
// /devices/{device}/commands receives downlink commands. It speaks CoAP over
// UDP (RFC 7252, coap.udp), DTLS (coap.dtls), TCP and TLS (RFC 8323,
// coap.tcp, coap.tls), block-wise transfer (RFC 7959 Block1) and Observe
// (RFC 7641); it uses go-coap's message codecs and pion's DTLS, and its own
// message layer (see "Why not go-coap's server").
//
// # Acknowledgement
//
// A request is answered only after the buffer reported its record durable
// (the Append callback): a confirmable request with a piggybacked ACK, a
// non-confirmable one with a non-confirmable answer (RFC 7252 §5.2.3;
// suppressed by a No-Response option, RFC 7967), a TCP/TLS request with its
// answer. Success is 2.04 Changed for POST and PUT alike: the message is
// stored, but no resource a client could address is created, so 2.01
// Created (which names the new resource in Location-Path) would mislead
// (RFC 7252 §5.8.2, §5.8.3). An append that fails after it was queued is
// answered 5.00 and counted; nothing that failed is ever answered 2.xx.
// Records carry QoS 1 for confirmable, TCP and TLS requests, 0 for
// non-confirmable ones.
//
// # Identity
//
//   - DTLS with a pre-shared key: the PSK identity is the device id; the key
//     comes from the registry (Authenticator.PSK). An identity without a key
//     gets a random one, so its handshake fails like a wrong key.
//   - DTLS or TLS with a client certificate verified against
//     coap.dtls_client_ca_file (tls_client_ca_file): the certificate's
//     subject common name is the device id.
//   - Otherwise (UDP, TCP, and DTLS/TLS without either): the URI query
//     auth=PASSWORD, checked by the registry for the device in the path
//     (coap://gw/devices/d1/climate?auth=PW). The registry answers a
//     repeated success from memory (about 2 µs), so checking every request
//     costs little; a miss costs one argon2id verification, which runs on
//     the goroutine of that endpoint only. The password crosses the network
//     in the clear on UDP and TCP: use DTLS or TLS where that matters.
//
// A request whose path names another device than its transport identity
// gets 4.03; missing or wrong credentials 4.01 (the same for an unknown
// device); a registry that cannot answer 5.03. A nil Authenticator is auth
// mode open: the path's device is taken as is, and DTLS has no keys (only
// certificates).
//
// # Message layer (UDP and DTLS)
//
// Datagrams of one endpoint are handled in arrival order by a goroutine
// that exists while that endpoint has datagrams waiting, so a device's
// messages reach the buffer in the order it sent them and a slow registry
// lookup delays only its own endpoint. Deduplication (RFC 7252 §4.5) is one
// server-wide cache keyed by endpoint and message id: a retransmission that
// arrives while its append is pending is dropped (the answer to the first
// copy answers it), one that arrives later gets the stored answer again,
// for EXCHANGE_LIFETIME (247 s) or until coap.dedup_entries newer
// exchanges pushed it out (counted in Stats.DedupEvicted). So a
// retransmitted message id is stored exactly once within that window. A
// 5.03 refusal is not remembered: its retransmission is handled anew.
// Empty confirmable messages (pings) and confirmable responses are answered
// with Reset, malformed confirmable messages too.
//
// # Answers to spoofable senders
//
// On plain UDP a source address proves nothing, so no answer is larger
// than the datagram it answers: diagnostics are cut first, then options; a
// stored answer is resent only for a retransmission at least its size. The
// largest answers (4.13 with Size1, 5.03 with Max-Age, 2.04 with Block1)
// are smaller than any request that carries a path.
//
// # Block-wise transfer
//
// Block1 bodies are assembled per endpoint, request URI and Request-Tag,
// answered 2.31 Continue per block and stored as one record after the last
// block. A body past coap.max_payload, announced by Size1 or reached while
// assembling, gets 4.13 with Size1 = max_payload; a block that does not
// continue the transfer gets 4.08. At most 256 transfers are open at once
// (5.03 beyond), each dropped after two minutes without a block.
//
// # Content formats
//
// application/json (50) and application/senml+json (110) must be valid
// JSON and are stored as sent. application/cbor (60) and
// application/senml+cbor (112) are converted to JSON at ingest (RFC 8949
// §6.1; SenML integer labels become their JSON names, RFC 8428 §6), so the
// envelope embeds them as payload like any JSON: the record's content type
// says what the stored bytes are (application/json,
// application/senml+json), and the property iotgw-converted-from (a Kafka
// header) keeps what the device sent. text/plain (0) and
// application/octet-stream (42) are stored as sent (the envelope base64s
// what is not JSON); a request without Content-Format is stored as sent
// with no content type. Anything else is 4.15.
//
// # Backpressure and errors
//
// A full buffer (gateway.ErrFull), coap.max_inflight appends pending, too
// many Block1 transfers or a closing server: 5.03 with Max-Age
// coap.busy_max_age. 4.00 for malformed payloads and blocks, 4.02 for an
// unknown critical option, 4.04 for paths other than
// /devices/{device}/{stream}[/...], 4.05 for other methods, 4.13 for bodies
// past max_payload (and records the buffer cannot store). Every error has
// a short diagnostic payload.
//
// # Observe and commands
//
// GET /devices/{device}/commands with Observe 0 registers the device (the
// latest registration wins), Observe 1 or a Reset to a notification ends
// it, and so does the end of its DTLS, TCP or TLS connection. Deliver
// (gateway.CommandTarget) sends a command as a 2.05 notification:
// confirmable on UDP and DTLS, retransmitted per RFC 7252 until the ACK or
// ctx, at most 1152 bytes. While it observes, a device is online in the
// registry (StatusRecorder).
//
// # Why not go-coap's server
//
// go-coap's UDP server deduplicates per "connection", which it closes
// after 16 s of silence by default, so a retransmission after that would be
// stored twice; keeping connections longer keeps a goroutine and caches per
// remote address with no bound on their number; and its handler model
// answers when the handler returns, which would hold a goroutine per
// request across the fsync. The message layer here is small, bounded
// everywhere, and answers from the buffer's callback.
package coap
