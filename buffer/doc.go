// Package buffer is iotgw's durable on-disk log.
package buffer
