//go:build unix

package mqtt

import "syscall"

// readNonblocking reads from the non-blocking descriptor fd into b: the
// bytes read, 0 at the end of the stream, -1 when nothing is waiting or on
// an error (which the caller's blocking read then reports).
func readNonblocking(fd uintptr, b []byte) int {
	for {
		n, err := syscall.Read(int(fd), b)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return -1
		}
		return n
	}
}
