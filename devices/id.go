package devices

import (
	"fmt"
	"strconv"
)

// MaxIDLen is the longest device id, in bytes.
const MaxIDLen = 128

// ValidID reports whether id can name a device. An id is 1 to 128 ASCII
// letters, digits, '.', '_', ':' or '-', and does not start with '.' or '-'.
//
// The rules keep an id safe everywhere it goes: as one MQTT topic level (no
// '/', '+', '#', NUL, and no leading '$' that would make it a system topic),
// as a Kafka key and a Redis key (printable ASCII, no spaces), as a file name
// ('.' and '..' and hidden files are impossible, '-' cannot look like a
// command-line flag) and inside ACL patterns where {device} is replaced by it.
// Ids are case-sensitive. MAC addresses (aa:bb:cc:dd:ee:ff), UUIDs and
// serial numbers fit.
//
// The error wraps ErrInvalidID and says which character is wrong.
func ValidID(id string) error {
	switch {
	case id == "":
		return fmt.Errorf("%w: empty", ErrInvalidID)
	case len(id) > MaxIDLen:
		return fmt.Errorf("%w: %s is %d bytes, the limit is %d", ErrInvalidID, quoteShort(id), len(id), MaxIDLen)
	case id[0] == '.' || id[0] == '-':
		return fmt.Errorf("%w: %s starts with %q", ErrInvalidID, quoteShort(id), id[0])
	}
	for i := 0; i < len(id); i++ {
		if !idChar(id[i]) {
			return fmt.Errorf("%w: %s has %q at byte %d; use letters, digits, '.', '_', ':' or '-'",
				ErrInvalidID, quoteShort(id), id[i], i)
		}
	}
	return nil
}

func idChar(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '.' || c == '_' || c == ':' || c == '-'
}

// quoteShort quotes s for an error message, cut so that a hostile input
// cannot make log lines huge.
func quoteShort(s string) string {
	const max = 64
	if len(s) > max {
		return strconv.Quote(s[:max]) + "..."
	}
	return strconv.Quote(s)
}
