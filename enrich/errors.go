package enrich

import "errors"

var (
	// ErrInvalidOptions is matched (errors.Is) by every error Options.Validate
	// returns; the message names the offending key, e.g.
	// "enrich.cache.ttl: must be positive".
	ErrInvalidOptions = errors.New("invalid enrich options")

	// ErrRefData is wrapped by errors about a reference data file (YAML or
	// CSV) that cannot be used; the message names the file and, where known,
	// the line, table or device.
	ErrRefData = errors.New("invalid reference data")

	// ErrSnapshot is wrapped by errors about a local snapshot file that cannot
	// be read back. New logs it and starts with an empty cache.
	ErrSnapshot = errors.New("unreadable enrich snapshot")
)

// optionError is one invalid config key. It matches ErrInvalidOptions.
type optionError struct {
	key string
	msg string
}

func (e *optionError) Error() string        { return e.key + ": " + e.msg }
func (e *optionError) Is(target error) bool { return target == ErrInvalidOptions }
