package simulator

import (
	"math"
	"strconv"
	"time"
)

// generator produces a device's messages in order. next returns the stream
// and the payload fields after the common header, as JSON members each
// preceded by a comma and followed by the closing brace:
// `,"lat":53.5,"lon":9.9}`.
type generator interface {
	next() (stream string, body []byte)
}

// appendPayload writes the full JSON payload: the common header (device,
// seq, ts and run when set) followed by the generator's body.
func appendPayload(b []byte, device string, seq uint64, ts time.Time, run string, body []byte) []byte {
	b = append(b, `{"device":"`...)
	b = append(b, device...)
	b = append(b, `","seq":`...)
	b = strconv.AppendUint(b, seq, 10)
	b = append(b, `,"ts":"`...)
	b = ts.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, '"')
	if run != "" {
		b = append(b, `,"run":"`...)
		b = append(b, run...)
		b = append(b, '"')
	}
	return append(b, body...)
}

// jsonBody builds a payload body; keys and string values are ASCII
// identifiers chosen by this package, so they need no escaping.
type jsonBody []byte

func (j jsonBody) num(key string, v float64, prec int) jsonBody {
	j = append(j, `,"`...)
	j = append(j, key...)
	j = append(j, `":`...)
	return appendFixed(j, v, prec)
}

var pow10 = [...]float64{1, 10, 100, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9}

// appendFixed formats v with prec decimals like strconv's 'f' format, in
// integer arithmetic: float formatting was most of the cost of a message.
func appendFixed(b []byte, v float64, prec int) []byte {
	if prec < 0 || prec >= len(pow10) || math.IsNaN(v) || math.Abs(v)*pow10[prec] >= 1<<53 {
		return strconv.AppendFloat(b, v, 'f', prec, 64)
	}
	n := int64(math.Round(v * pow10[prec]))
	if n < 0 {
		b = append(b, '-')
		n = -n
	}
	p := int64(pow10[prec])
	b = strconv.AppendInt(b, n/p, 10)
	if prec == 0 {
		return b
	}
	b = append(b, '.')
	frac := n % p
	for d := p / 10; d > 1 && frac < d; d /= 10 {
		b = append(b, '0')
	}
	return strconv.AppendInt(b, frac, 10)
}

func (j jsonBody) int(key string, v int64) jsonBody {
	j = append(j, `,"`...)
	j = append(j, key...)
	j = append(j, `":`...)
	return strconv.AppendInt(j, v, 10)
}

func (j jsonBody) str(key, v string) jsonBody {
	j = append(j, `,"`...)
	j = append(j, key...)
	j = append(j, `":"`...)
	j = append(j, v...)
	return append(j, '"')
}

func (j jsonBody) boolean(key string, v bool) jsonBody {
	j = append(j, `,"`...)
	j = append(j, key...)
	j = append(j, `":`...)
	return strconv.AppendBool(j, v)
}

func (j jsonBody) end() []byte { return append(j, '}') }
