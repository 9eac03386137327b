//go:build integration

package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/gorilla/websocket"
)

// wsStream is a WebSocket connection as a byte stream (binary messages),
// the way MQTT over WebSocket clients see it.
type wsStream struct {
	net.Conn
	ws *websocket.Conn
	r  io.Reader
	mu sync.Mutex // gorilla allows one writer at a time; paho writes from several goroutines
}

func (c *wsStream) Read(p []byte) (int, error) {
	for {
		if c.r == nil {
			_, r, err := c.ws.NextReader()
			if err != nil {
				return 0, err
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if errors.Is(err, io.EOF) {
			c.r = nil
			if n == 0 {
				continue
			}
			err = nil
		}
		return n, err
	}
}

func (c *wsStream) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.ws.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (c *wsStream) Close() error { return c.ws.Close() }

// TestMQTTOverWebSocket: the binary serves MQTT over WebSocket when
// IOTGW_MQTT_WEBSOCKET names an address, and what a Go MQTT 5 client
// publishes there lands in Kafka.
func TestMQTTOverWebSocket(t *testing.T) {
	broker := kafkaAddr(t)
	prefix := uniqueTopicPrefix(t)
	wsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	gw := startGateway(t, baseConfig(broker, t.TempDir(), prefix), "IOTGW_MQTT_WEBSOCKET="+wsAddr)

	d := websocket.Dialer{Subprotocols: []string{"mqtt"}, HandshakeTimeout: 5 * time.Second}
	ws, _, err := d.Dial("ws://"+wsAddr+"/mqtt", nil)
	if err != nil {
		t.Fatal(err)
	}
	c := paho.NewClient(paho.ClientConfig{Conn: &wsStream{Conn: ws.UnderlyingConn(), ws: ws}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.Connect(ctx, &paho.Connect{ClientID: "browser-1", CleanStart: true, KeepAlive: 30}); err != nil {
		t.Fatal(err)
	}
	const n = 20
	for i := 1; i <= n; i++ {
		if _, err := c.Publish(ctx, &paho.Publish{Topic: "devices/browser-1/clicks", QoS: 1, Payload: []byte(fmt.Sprintf(`{"seq":%d}`, i))}); err != nil {
			t.Fatalf("publish %d: %v\ngateway log:\n%s", i, err, gw.Logs())
		}
	}
	_ = c.Disconnect(&paho.Disconnect{})
	msgs := consume(t, broker, prefix+".clicks", n, 60*time.Second)
	if len(msgs) != n || string(msgs[0].Key) != "browser-1" {
		t.Fatalf("got %d records (key %q), want %d from browser-1", len(msgs), msgs[0].Key, n)
	}
}
