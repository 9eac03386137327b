package devices

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"
)

// argon2Params are the cost parameters of an argon2id hash.
type argon2Params struct {
	memory  uint32 // KiB
	time    uint32 // passes
	threads uint8
	saltLen int
	keyLen  int
}

// tunedParams are the OWASP-recommended argon2id settings (19 MiB, 2 passes,
// 1 lane). On the 2-core reference machine one verification takes about
// 40 ms and 19 MiB; verifications run at most GOMAXPROCS at a time, so a
// reconnect storm costs bounded memory. Verification always uses the
// parameters written in the stored hash, so raising these later keeps old
// hashes working.
var tunedParams = argon2Params{memory: 19 * 1024, time: 2, threads: 1, saltLen: 16, keyLen: 32}

// hashParams is what new hashes use; tests lower it to keep suites fast.
var hashParams = tunedParams

// Limits on parameters read from a stored hash, so that a corrupt or hostile
// registry entry cannot make one verification take minutes or gigabytes.
const (
	maxArgonMemory = 1 << 20 // KiB, 1 GiB
	maxArgonTime   = 64
	maxHashLen     = 1024
)

// HashPassword returns an argon2id hash of password in PHC string format:
// $argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>, salt and hash in unpadded
// standard base64. This is the only form in which passwords are stored.
func HashPassword(password string) (string, error) {
	return hashArgon2(password, hashParams)
}

func hashArgon2(password string, p argon2Params) (string, error) {
	salt := make([]byte, p.saltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("hash password: %w", err)
	}
	key := argon2.IDKey([]byte(password), salt, p.time, p.memory, p.threads, uint32(p.keyLen))
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, p.memory, p.time, p.threads,
		base64.RawStdEncoding.EncodeToString(salt), base64.RawStdEncoding.EncodeToString(key)), nil
}

// CheckHash reports whether h is a password hash this package can verify:
// argon2id in PHC format, or bcrypt ($2a$, $2b$, $2y$) for imports from
// other systems. The error wraps ErrUnsupportedHash and never contains h.
func CheckHash(h string) error {
	switch {
	case strings.HasPrefix(h, "$argon2id$"):
		_, _, _, err := parseArgon2(h)
		return err
	case isBcrypt(h):
		if _, err := bcrypt.Cost([]byte(h)); err != nil {
			return fmt.Errorf("%w: malformed bcrypt hash", ErrUnsupportedHash)
		}
		return nil
	case h == "":
		return fmt.Errorf("%w: empty", ErrUnsupportedHash)
	}
	return fmt.Errorf("%w: want an argon2id ($argon2id$...) or bcrypt ($2a$, $2b$, $2y$) hash", ErrUnsupportedHash)
}

func isBcrypt(h string) bool {
	return strings.HasPrefix(h, "$2a$") || strings.HasPrefix(h, "$2b$") || strings.HasPrefix(h, "$2y$")
}

// verifyPassword reports whether password matches hash h. It returns
// ErrBadCredentials for a mismatch and an ErrUnsupportedHash error when h
// cannot be parsed.
func verifyPassword(h, password string) error {
	switch {
	case strings.HasPrefix(h, "$argon2id$"):
		p, salt, key, err := parseArgon2(h)
		if err != nil {
			return err
		}
		got := argon2.IDKey([]byte(password), salt, p.time, p.memory, p.threads, uint32(len(key)))
		if subtle.ConstantTimeCompare(got, key) != 1 {
			return ErrBadCredentials
		}
		return nil
	case isBcrypt(h):
		err := bcrypt.CompareHashAndPassword([]byte(h), []byte(password))
		if errors.Is(err, bcrypt.ErrMismatchedHashAndPassword) {
			return ErrBadCredentials
		}
		if err != nil {
			return fmt.Errorf("%w: malformed bcrypt hash", ErrUnsupportedHash)
		}
		return nil
	}
	return ErrUnsupportedHash
}

// parseArgon2 parses $argon2id$v=19$m=M,t=T,p=P$salt$hash.
func parseArgon2(h string) (argon2Params, []byte, []byte, error) {
	bad := func(why string) (argon2Params, []byte, []byte, error) {
		return argon2Params{}, nil, nil, fmt.Errorf("%w: malformed argon2id hash: %s", ErrUnsupportedHash, why)
	}
	if len(h) > maxHashLen {
		return bad("too long")
	}
	parts := strings.Split(h, "$")
	if len(parts) != 6 || parts[0] != "" || parts[1] != "argon2id" {
		return bad("want $argon2id$v=19$m=...,t=...,p=...$salt$hash")
	}
	var v int
	if _, err := fmt.Sscanf(parts[2], "v=%d", &v); err != nil || parts[2] != fmt.Sprintf("v=%d", v) {
		return bad("version field")
	}
	if v != argon2.Version {
		return bad(fmt.Sprintf("version %d, want %d", v, argon2.Version))
	}
	var p argon2Params
	var threads uint32
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &p.memory, &p.time, &threads); err != nil ||
		parts[3] != fmt.Sprintf("m=%d,t=%d,p=%d", p.memory, p.time, threads) {
		return bad("parameter field")
	}
	switch {
	case p.time < 1 || p.time > maxArgonTime:
		return bad("t out of range")
	case threads < 1 || threads > 255:
		return bad("p out of range")
	case p.memory < 8*threads || p.memory > maxArgonMemory:
		return bad("m out of range")
	}
	p.threads = uint8(threads)
	salt, err := base64.RawStdEncoding.Strict().DecodeString(parts[4])
	if err != nil || len(salt) < 8 {
		return bad("salt")
	}
	key, err := base64.RawStdEncoding.Strict().DecodeString(parts[5])
	if err != nil || len(key) < 16 {
		return bad("hash")
	}
	return p, salt, key, nil
}

// dummyHash returns a hash that is verified in place of a real one when a
// device is unknown or has no password, so that the answer takes as long as
// a wrong password and does not tell a caller which ids exist. It is made
// once per parameter set, with the parameters new hashes get.
func dummyHash() string {
	p := hashParams
	if h, ok := dummyHashes.Load(p); ok {
		return h.(string)
	}
	h, _ := hashArgon2("iotgw-dummy", p) // crypto/rand does not fail
	dummyHashes.Store(p, h)
	return h
}

var dummyHashes sync.Map // argon2Params -> string
