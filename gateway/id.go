package gateway

import (
	"encoding/binary"
	"math/rand/v2"
	"time"
)

// crockford is the ULID alphabet: sortable, no ambiguous letters.
const crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

// IDLen is the length of an ID.
const IDLen = 26

// NewID returns a ULID: 48 bits of milliseconds since the epoch and 80
// random bits, as 26 Crockford base32 characters. IDs sort by time, and a
// record keeps its ID in the Buffer, so redelivery repeats the same ID.
func NewID(now time.Time) string {
	var out [IDLen]byte
	PutID(&out, now)
	return string(out[:])
}

// PutID writes a new ID (see NewID) into out, for a caller that needs it
// only until it has copied it: the MQTT publish path, where the string
// NewID allocates was 2% of the gateway's CPU.
func PutID(out *[IDLen]byte, now time.Time) {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], uint64(now.UnixMilli())<<16)
	// math/rand/v2's top-level source is a ChaCha8 generator per thread,
	// seeded from the operating system's entropy: no lock shared by every
	// device's connection on the publish path.
	r1, r2 := rand.Uint64(), rand.Uint64()
	b[6], b[7] = byte(r1>>8), byte(r1)
	binary.BigEndian.PutUint64(b[8:], r2)

	// 128 bits in 26 characters of 5 bits: the first character carries 3.
	hi := binary.BigEndian.Uint64(b[:8])
	lo := binary.BigEndian.Uint64(b[8:])
	for i := 25; i >= 0; i-- {
		out[i] = crockford[lo&31]
		lo = lo>>5 | hi<<59
		hi >>= 5
	}
}
