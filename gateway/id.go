package gateway

import (
	crand "crypto/rand"
	"encoding/binary"
	"math/rand/v2"
	"sync"
	"time"
)

// crockford is the ULID alphabet: sortable, no ambiguous letters.
const crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

var idSource = struct {
	sync.Mutex
	rng *rand.ChaCha8
}{rng: newChaCha()}

func newChaCha() *rand.ChaCha8 {
	var seed [32]byte
	if _, err := cryptoRead(seed[:]); err != nil {
		// crypto/rand does not fail on supported platforms; a time seed
		// still keeps ids unique within this process.
		binary.LittleEndian.PutUint64(seed[:], uint64(time.Now().UnixNano()))
	}
	return rand.NewChaCha8(seed)
}

var cryptoRead = crand.Read

// NewID returns a ULID: 48 bits of milliseconds since the epoch and 80
// random bits, as 26 Crockford base32 characters. IDs sort by time, and a
// record keeps its ID in the Buffer, so redelivery repeats the same ID.
func NewID(now time.Time) string {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], uint64(now.UnixMilli())<<16)
	idSource.Lock()
	r1, r2 := idSource.rng.Uint64(), idSource.rng.Uint64()
	idSource.Unlock()
	b[6], b[7] = byte(r1>>8), byte(r1)
	binary.BigEndian.PutUint64(b[8:], r2)

	var out [26]byte
	// 128 bits in 26 characters of 5 bits: the first character carries 3.
	hi := binary.BigEndian.Uint64(b[:8])
	lo := binary.BigEndian.Uint64(b[8:])
	for i := 25; i >= 0; i-- {
		out[i] = crockford[lo&31]
		lo = lo>>5 | hi<<59
		hi >>= 5
	}
	return string(out[:])
}
