package simulator

import (
	"math"
	"strconv"
	"time"
)

// generator produces a device's messages in order. next returns the stream
// and the payload fields after the common header, as JSON members each
// preceded by a comma and followed by the closing brace:
// `,"lat":53.5,"lon":9.9}`. body is the generator's own buffer, valid until
// the next call: a device copies it into the payload at once.
type generator interface {
	next() (stream string, body []byte)
}

// payloadWriter writes the payloads of one device: the common header
// (device, seq, ts and run when set) followed by a generator's body. It
// remembers the date and time of day of the last second it wrote, as a
// device sends many messages a second and formatting the time was a good
// part of the cost of a message. It is not safe for concurrent use.
type payloadWriter struct {
	device, run string

	sec   int64  // the Unix second clock holds
	clock []byte // sec as RFC 3339 in UTC, without fraction and zone
}

func newPayloadWriter(device, run string) *payloadWriter {
	return &payloadWriter{device: device, run: run}
}

// append writes the payload of message seq generated at ts to b.
func (w *payloadWriter) append(b []byte, seq uint64, ts time.Time, body []byte) []byte {
	b = append(b, `{"device":"`...)
	b = append(b, w.device...)
	b = append(b, `","seq":`...)
	b = strconv.AppendUint(b, seq, 10)
	b = append(b, `,"ts":"`...)
	b = w.appendTime(b, ts)
	b = append(b, '"')
	if w.run != "" {
		b = append(b, `,"run":"`...)
		b = append(b, w.run...)
		b = append(b, '"')
	}
	return append(b, body...)
}

// appendTime writes ts as time.RFC3339Nano in UTC does: the fraction
// without trailing zeros, and no point when it is zero.
func (w *payloadWriter) appendTime(b []byte, ts time.Time) []byte {
	sec, nsec := ts.Unix(), ts.Nanosecond()
	if w.clock == nil || sec != w.sec {
		w.sec = sec
		w.clock = time.Unix(sec, 0).UTC().AppendFormat(w.clock[:0], "2006-01-02T15:04:05")
	}
	b = append(b, w.clock...)
	if nsec != 0 {
		var frac [10]byte
		frac[0] = '.'
		for i := 9; i > 0; i-- {
			frac[i] = byte('0' + nsec%10)
			nsec /= 10
		}
		n := len(frac)
		for frac[n-1] == '0' {
			n--
		}
		b = append(b, frac[:n]...)
	}
	return append(b, 'Z')
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
// It writes the digits of the rounded value times 10^prec from the right,
// with the point before the last prec and at least one digit before it.
func appendFixed(b []byte, v float64, prec int) []byte {
	if prec < 0 || prec >= len(pow10) || math.IsNaN(v) || math.Abs(v)*pow10[prec] >= 1<<53 {
		return strconv.AppendFloat(b, v, 'f', prec, 64)
	}
	n := int64(math.Round(v * pow10[prec]))
	if n < 0 {
		b = append(b, '-')
		n = -n
	}
	u := uint64(n)
	var digits [24]byte // 16 digits below 2^53, the point and a spare
	i := len(digits)
	for range prec {
		i--
		digits[i] = byte('0' + u%10)
		u /= 10
	}
	if prec > 0 {
		i--
		digits[i] = '.'
	}
	for {
		i--
		digits[i] = byte('0' + u%10)
		u /= 10
		if u == 0 {
			break
		}
	}
	return append(b, digits[i:]...)
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
