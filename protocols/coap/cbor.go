package coap

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strconv"
	"unicode/utf8"
)

// errCBOR wraps every reason cborToJSON refuses its input.
var errCBOR = errors.New("cbor")

// maxCBORDepth bounds nesting (arrays, maps, tags), so that hostile input
// cannot exhaust the stack.
const maxCBORDepth = 64

// senmlLabels are the SenML CBOR integer labels and the JSON names they
// stand for (RFC 8428 §6, Table 4).
var senmlLabels = map[int64]string{
	-1: "bver", -2: "bn", -3: "bt", -4: "bu", -5: "bv", -6: "bs",
	0: "n", 1: "u", 2: "v", 3: "vs", 4: "vb", 5: "s", 6: "t", 7: "ut", 8: "vd",
}

// byteEncoding is how byte strings become JSON strings: base64url without
// padding unless an expected-conversion tag (21-23) says otherwise.
type byteEncoding uint8

const (
	encBase64URL byteEncoding = iota
	encBase64
	encBase16
)

// cborToJSON converts one CBOR data item (RFC 8949) to JSON following the
// conversion rules of RFC 8949 §6.1: integers and finite floats become
// numbers, byte strings base64url strings (or as tags 21-23 ask), bignums
// (tags 2, 3) base64url strings ("~" before negative ones), other tags their
// content, NaN, infinities, undefined and other simple values null,
// indefinite lengths definite. Map keys that are not text become strings
// (integers in decimal; with senml, the integer labels of SenML records
// their JSON names). It refuses malformed or truncated input, invalid UTF-8
// text, keys that are arrays or maps, nesting deeper than 64 and anything
// after the item.
func cborToJSON(in []byte, senml bool) ([]byte, error) {
	c := cborConverter{in: in, size: len(in), out: make([]byte, 0, 2*len(in)+16), senml: senml}
	if err := c.item(0, encBase64URL, senml); err != nil {
		return nil, err
	}
	if len(c.in) != 0 {
		return nil, c.fail("%d bytes after the data item", len(c.in))
	}
	return c.out, nil
}

type cborConverter struct {
	in    []byte
	size  int
	out   []byte
	senml bool
}

func (c *cborConverter) fail(format string, args ...any) error {
	return fmt.Errorf("%w: byte %d: %s", errCBOR, c.size-len(c.in), fmt.Sprintf(format, args...))
}

// head reads an initial byte and its argument. indef reports additional
// information 31 (indefinite length, or break for major type 7).
func (c *cborConverter) head() (major byte, info byte, arg uint64, indef bool, err error) {
	if len(c.in) == 0 {
		return 0, 0, 0, false, c.fail("truncated")
	}
	b := c.in[0]
	c.in = c.in[1:]
	major, info = b>>5, b&31
	var n int
	switch {
	case info < 24:
		return major, info, uint64(info), false, nil
	case info == 24:
		n = 1
	case info == 25:
		n = 2
	case info == 26:
		n = 4
	case info == 27:
		n = 8
	case info == 31:
		if major == 0 || major == 1 || major == 6 {
			return 0, 0, 0, false, c.fail("indefinite length for major type %d", major)
		}
		return major, info, 0, true, nil
	default:
		return 0, 0, 0, false, c.fail("reserved additional information %d", info)
	}
	if len(c.in) < n {
		return 0, 0, 0, false, c.fail("truncated")
	}
	var buf [8]byte
	copy(buf[8-n:], c.in[:n])
	c.in = c.in[n:]
	return major, info, binary.BigEndian.Uint64(buf[:]), false, nil
}

// isBreak consumes a break (0xff) if one is next.
func (c *cborConverter) isBreak() bool {
	if len(c.in) > 0 && c.in[0] == 0xff {
		c.in = c.in[1:]
		return true
	}
	return false
}

// item converts one data item. record is true for the elements of a SenML
// pack, whose integer map keys are SenML labels.
func (c *cborConverter) item(depth int, enc byteEncoding, record bool) error {
	if depth > maxCBORDepth {
		return c.fail("nested deeper than %d", maxCBORDepth)
	}
	major, info, arg, indef, err := c.head()
	if err != nil {
		return err
	}
	switch major {
	case 0:
		c.out = strconv.AppendUint(c.out, arg, 10)
	case 1:
		c.out = appendNegative(c.out, arg)
	case 2:
		b, err := c.chunks(major, arg, indef)
		if err != nil {
			return err
		}
		c.out = appendBytes(c.out, b, enc)
	case 3:
		b, err := c.chunks(major, arg, indef)
		if err != nil {
			return err
		}
		c.out = appendJSONString(c.out, b)
	case 4:
		// Every item takes a byte at least: a count past the input is
		// refused before the loop spins on it.
		if !indef && arg > uint64(len(c.in)) {
			return c.fail("array of %d items in %d bytes", arg, len(c.in))
		}
		c.out = append(c.out, '[')
		for i := uint64(0); indef || i < arg; i++ {
			if indef && c.isBreak() {
				break
			}
			if i > 0 {
				c.out = append(c.out, ',')
			}
			if err := c.item(depth+1, enc, c.senml && depth == 0); err != nil {
				return err
			}
		}
		c.out = append(c.out, ']')
	case 5:
		if !indef && arg > uint64(len(c.in))/2 {
			return c.fail("map of %d pairs in %d bytes", arg, len(c.in))
		}
		c.out = append(c.out, '{')
		for i := uint64(0); indef || i < arg; i++ {
			if indef && c.isBreak() {
				break
			}
			if i > 0 {
				c.out = append(c.out, ',')
			}
			if err := c.key(depth+1, enc, record); err != nil {
				return err
			}
			c.out = append(c.out, ':')
			if err := c.item(depth+1, enc, false); err != nil {
				return err
			}
		}
		c.out = append(c.out, '}')
	case 6:
		switch arg {
		case 2, 3: // bignums
			m, _, n, ind, err := c.head()
			if err != nil {
				return err
			}
			if m != 2 {
				return c.fail("bignum of major type %d", m)
			}
			b, err := c.chunks(m, n, ind)
			if err != nil {
				return err
			}
			c.out = append(c.out, '"')
			if arg == 3 {
				c.out = append(c.out, '~')
			}
			c.out = base64.RawURLEncoding.AppendEncode(c.out, b)
			c.out = append(c.out, '"')
			return nil
		case 21:
			enc = encBase64URL
		case 22:
			enc = encBase64
		case 23:
			enc = encBase16
		}
		return c.item(depth+1, enc, record)
	case 7:
		switch {
		case indef:
			return c.fail("unexpected break")
		case info == 20:
			c.out = append(c.out, "false"...)
		case info == 21:
			c.out = append(c.out, "true"...)
		case info == 25:
			c.out = appendFloat(c.out, halfToFloat(uint16(arg)), 32)
		case info == 26:
			c.out = appendFloat(c.out, float64(math.Float32frombits(uint32(arg))), 32)
		case info == 27:
			c.out = appendFloat(c.out, math.Float64frombits(arg), 64)
		default: // null, undefined and unassigned simple values
			c.out = append(c.out, "null"...)
		}
	}
	return nil
}

// key converts a map key to a JSON string.
func (c *cborConverter) key(depth int, enc byteEncoding, record bool) error {
	if depth > maxCBORDepth {
		return c.fail("nested deeper than %d", maxCBORDepth)
	}
	if len(c.in) == 0 {
		return c.fail("truncated")
	}
	switch c.in[0] >> 5 {
	case 3:
		return c.item(depth, enc, false)
	case 0, 1:
		major, _, arg, _, err := c.head()
		if err != nil {
			return err
		}
		if record && arg <= math.MaxInt64 {
			v := int64(arg)
			if major == 1 {
				v = -1 - v
			}
			if name, ok := senmlLabels[v]; ok {
				c.out = appendJSONString(c.out, []byte(name))
				return nil
			}
		}
		c.out = append(c.out, '"')
		if major == 0 {
			c.out = strconv.AppendUint(c.out, arg, 10)
		} else {
			c.out = appendNegative(c.out, arg)
		}
		c.out = append(c.out, '"')
		return nil
	case 2:
		return c.item(depth, enc, false)
	case 6:
		_, _, _, _, err := c.head()
		if err != nil {
			return err
		}
		return c.key(depth+1, enc, record)
	case 7: // false, true, null, numbers: their JSON text, quoted
		c.out = append(c.out, '"')
		if err := c.item(depth, enc, false); err != nil {
			return err
		}
		c.out = append(c.out, '"')
		return nil
	}
	return c.fail("map key of major type %d", c.in[0]>>5)
}

// chunks returns the content of a byte or text string, joining the chunks
// of an indefinite-length one. Text must be valid UTF-8.
func (c *cborConverter) chunks(major byte, n uint64, indef bool) ([]byte, error) {
	if !indef {
		if n > uint64(len(c.in)) {
			return nil, c.fail("string of %d bytes in %d", n, len(c.in))
		}
		b := c.in[:n]
		c.in = c.in[n:]
		if major == 3 && !utf8.Valid(b) {
			return nil, c.fail("invalid UTF-8")
		}
		return b, nil
	}
	var out []byte
	for {
		if c.isBreak() {
			return out, nil
		}
		m, _, cn, ind, err := c.head()
		if err != nil {
			return nil, err
		}
		if m != major || ind {
			return nil, c.fail("bad chunk in an indefinite-length string")
		}
		b, err := c.chunks(major, cn, false)
		if err != nil {
			return nil, err
		}
		if out == nil {
			out = make([]byte, 0, len(b))
		}
		out = append(out, b...)
	}
}

// appendNegative writes -1-n, which for n = 2^64-1 does not fit an int64.
func appendNegative(dst []byte, n uint64) []byte {
	if n == math.MaxUint64 {
		return append(dst, "-18446744073709551616"...)
	}
	dst = append(dst, '-')
	return strconv.AppendUint(dst, n+1, 10)
}

func appendBytes(dst, b []byte, enc byteEncoding) []byte {
	dst = append(dst, '"')
	switch enc {
	case encBase64:
		dst = base64.StdEncoding.AppendEncode(dst, b)
	case encBase16:
		const hex = "0123456789ABCDEF"
		for _, x := range b {
			dst = append(dst, hex[x>>4], hex[x&15])
		}
	default:
		dst = base64.RawURLEncoding.AppendEncode(dst, b)
	}
	return append(dst, '"')
}

// appendFloat writes a finite float as a JSON number, anything else as null.
func appendFloat(dst []byte, f float64, bits int) []byte {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return append(dst, "null"...)
	}
	return strconv.AppendFloat(dst, f, 'g', -1, bits)
}

// halfToFloat decodes an IEEE 754 half-precision float (RFC 8949 App. D).
func halfToFloat(h uint16) float64 {
	exp, mant := int(h>>10)&0x1f, float64(h&0x3ff)
	var v float64
	switch exp {
	case 0:
		v = math.Ldexp(mant, -24)
	case 31:
		if mant == 0 {
			v = math.Inf(1)
		} else {
			v = math.NaN()
		}
	default:
		v = math.Ldexp(mant+1024, exp-25)
	}
	if h&0x8000 != 0 {
		return -v
	}
	return v
}

const hexDigits = "0123456789abcdef"

// appendJSONString quotes valid UTF-8 as a JSON string.
func appendJSONString(dst, s []byte) []byte {
	dst = append(dst, '"')
	for _, c := range s {
		switch {
		case c == '"' || c == '\\':
			dst = append(dst, '\\', c)
		case c < 0x20:
			dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&15])
		default:
			dst = append(dst, c)
		}
	}
	return append(dst, '"')
}
