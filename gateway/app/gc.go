package app

import (
	"os"
	"runtime/debug"
)

// DefaultGCPercent is the garbage collector's target (GOGC) the gateway
// runs with unless the environment sets GOGC: the heap may grow to three
// times the live data between collections instead of Go's default two.
// Under load that halves the collections, whose CPU on a small box shows up
// directly in the device-to-Kafka tail latency (docs/kafka.md, Latency);
// idle connections make almost no garbage, so their memory is unchanged
// (bench/footprint).
const DefaultGCPercent = 200

// TuneGC applies DefaultGCPercent unless GOGC is set.
func TuneGC() {
	if _, ok := os.LookupEnv("GOGC"); !ok {
		debug.SetGCPercent(DefaultGCPercent)
	}
}
