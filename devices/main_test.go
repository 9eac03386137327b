package devices

import (
	"os"
	"testing"
)

// fastParams make hashing cheap so that suites that add many devices stay
// fast; tests of hashing cost itself switch to tunedParams.
var fastParams = argon2Params{memory: 64, time: 1, threads: 1, saltLen: 16, keyLen: 32}

func TestMain(m *testing.M) {
	hashParams = fastParams
	os.Exit(m.Run())
}

// withTunedParams makes new hashes use the production parameters for the
// rest of the test.
func withTunedParams(t *testing.T) {
	t.Helper()
	hashParams = tunedParams
	t.Cleanup(func() { hashParams = fastParams })
}
