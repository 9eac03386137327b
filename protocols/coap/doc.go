// Package coap is the CoAP front door for constrained devices: POST or PUT
// /devices/{device}/{stream} ingests one message with the same routing,
// envelope and durability rule as MQTT (a confirmable request is answered
// only after the durable append).
package coap
