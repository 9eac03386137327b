package mqtt

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"slices"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
)

// TestIdleConnectionStack checks what an idle device costs in goroutine
// stacks: its connection's read goroutine, whose stack is 8 KiB again once
// the device is idle, after a CONNECT, a SUBSCRIBE, a QoS 1 PUBLISH and a
// PINGREQ. mochi v2.7.9 passes packets by value on its read path, which left
// that stack at 16 KiB for good, and ran a writer goroutine per connection;
// third_party/mochi-mqtt/PATCHES.md says what iotgw's copy changes.
func TestIdleConnectionStack(t *testing.T) {
	if raceDetector() {
		t.Skip("the race detector's instrumentation makes the frames larger")
	}
	buf := &heldBuffer{}
	s := startServer(t, buf, nil, nil)
	const devices = 100
	before := stackInuse()
	for i := range devices {
		device := fmt.Sprintf("truck-%d", i)
		c, code := dial(t, s, 4, device, "", "")
		if code != 0 {
			t.Fatalf("%s: connack 0x%02x", device, code)
		}
		c.subscribe(1, packets.Subscription{Filter: "devices/" + device + "/commands/#", Qos: 1})
		c.publish(1, 1, "devices/"+device+"/position", `{"seq":1}`)
		waitFor(t, func() bool { return buf.appended() == i+1 })
		buf.release(nil)
		c.expect(packets.Puback)
		c.write(&packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}}, (*packets.Packet).PingreqEncode)
		c.expect(packets.Pingresp)
	}
	perDevice := float64(stackInuse()-before) / devices
	t.Logf("goroutine stacks: %.0f bytes per idle device", perDevice)
	if perDevice >= 10<<10 {
		t.Fatalf("goroutine stacks: %.0f bytes per idle device, want under 10 KiB (one 8 KiB stack)", perDevice)
	}
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

// raceDetector reports whether the test binary was built with -race.
func raceDetector() bool {
	bi, ok := debug.ReadBuildInfo()
	return ok && slices.ContainsFunc(bi.Settings, func(s debug.BuildSetting) bool { return s.Key == "-race" && s.Value == "true" })
}
