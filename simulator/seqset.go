package simulator

import (
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// SeqRange is an inclusive range of sequence numbers.
type SeqRange struct {
	First, Last uint64
}

// SeqSet is a set of sequence numbers kept as sorted, disjoint, non-adjacent
// ranges: a device whose messages were all acked costs one range however
// many it sent. Adding in increasing order is O(1); filling a hole is a
// binary search and at most one slice move. The zero value is empty. It is
// not safe for concurrent use. It marshals to JSON as [[first,last],...].
type SeqSet struct {
	r []SeqRange
}

// Add inserts seq and reports whether it was not already present.
func (s *SeqSet) Add(seq uint64) bool {
	n := len(s.r)
	if n == 0 || seq > s.r[n-1].Last+1 {
		s.r = append(s.r, SeqRange{seq, seq})
		return true
	}
	if seq == s.r[n-1].Last+1 {
		s.r[n-1].Last = seq
		return true
	}
	// i is the first range that ends at or after seq.
	i := sort.Search(n, func(i int) bool { return s.r[i].Last >= seq })
	if s.r[i].First <= seq {
		return false
	}
	joinsNext := seq+1 == s.r[i].First
	joinsPrev := i > 0 && s.r[i-1].Last+1 == seq
	switch {
	case joinsPrev && joinsNext:
		s.r[i-1].Last = s.r[i].Last
		s.r = append(s.r[:i], s.r[i+1:]...)
	case joinsPrev:
		s.r[i-1].Last = seq
	case joinsNext:
		s.r[i].First = seq
	default:
		s.r = append(s.r, SeqRange{})
		copy(s.r[i+1:], s.r[i:])
		s.r[i] = SeqRange{seq, seq}
	}
	return true
}

// Contains reports whether seq is in the set.
func (s *SeqSet) Contains(seq uint64) bool {
	i := sort.Search(len(s.r), func(i int) bool { return s.r[i].Last >= seq })
	return i < len(s.r) && s.r[i].First <= seq
}

// Len is the number of sequence numbers in the set.
func (s *SeqSet) Len() uint64 {
	var n uint64
	for _, r := range s.r {
		n += r.Last - r.First + 1
	}
	return n
}

// Max is the largest member, 0 when empty.
func (s *SeqSet) Max() uint64 {
	if len(s.r) == 0 {
		return 0
	}
	return s.r[len(s.r)-1].Last
}

// Ranges returns the set's ranges in increasing order; the slice is a copy.
func (s *SeqSet) Ranges() []SeqRange { return append([]SeqRange(nil), s.r...) }

// Minus returns the ranges of s that are not in o.
func (s *SeqSet) Minus(o *SeqSet) []SeqRange {
	var out []SeqRange
	j := 0
	for _, r := range s.r {
		lo := r.First
		for j < len(o.r) && o.r[j].Last < lo {
			j++
		}
		for k := j; lo <= r.Last; k++ {
			if k >= len(o.r) || o.r[k].First > r.Last {
				out = append(out, SeqRange{lo, r.Last})
				break
			}
			if o.r[k].First > lo {
				out = append(out, SeqRange{lo, o.r[k].First - 1})
			}
			if o.r[k].Last >= r.Last {
				break
			}
			lo = o.r[k].Last + 1
		}
	}
	return out
}

// String formats the set as "1-100,102,104-200".
func (s *SeqSet) String() string { return formatRanges(s.r) }

func formatRanges(rs []SeqRange) string {
	var b strings.Builder
	for i, r := range rs {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.FormatUint(r.First, 10))
		if r.Last != r.First {
			b.WriteByte('-')
			b.WriteString(strconv.FormatUint(r.Last, 10))
		}
	}
	return b.String()
}

// MarshalJSON writes [[first,last],...].
func (s SeqSet) MarshalJSON() ([]byte, error) {
	out := make([][2]uint64, len(s.r))
	for i, r := range s.r {
		out[i] = [2]uint64{r.First, r.Last}
	}
	return json.Marshal(out)
}

// UnmarshalJSON reads [[first,last],...]; ranges must be in increasing
// order, disjoint and non-adjacent, as MarshalJSON writes them.
func (s *SeqSet) UnmarshalJSON(b []byte) error {
	var in [][2]uint64
	if err := json.Unmarshal(b, &in); err != nil {
		return err
	}
	s.r = make([]SeqRange, 0, len(in))
	for i, p := range in {
		if p[0] > p[1] || (i > 0 && p[0] <= in[i-1][1]+1) {
			return fmt.Errorf("seq ranges: range %d (%d-%d) is not after the one before it", i, p[0], p[1])
		}
		s.r = append(s.r, SeqRange{p[0], p[1]})
	}
	return nil
}
