//go:build !unix

package mqtt

// readNonblocking never reads ahead where there is no portable
// non-blocking read: every read is the caller's own.
func readNonblocking(uintptr, []byte) int { return -1 }
