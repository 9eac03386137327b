//go:build !unix

package simulator

import "time"

// processCPU is not measured here; benchmarks then leave out cpu-ns/msg.
func processCPU() time.Duration { return 0 }
