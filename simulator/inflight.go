package simulator

import "iter"

// inflightTable finds a device's in-flight publishes by packet id, in
// place of a map: it is looked up and changed a few times per message. The
// device hands out ids in turn, so the ids in flight lie close together
// and each has a slot of its own at id modulo the table's size. When a
// publish stays in flight while a table's worth of later ones come and go,
// its slot is wanted again, and the table doubles, up to one slot per id.
// The zero value is empty. It is not safe for concurrent use.
type inflightTable struct {
	slots []*pending // a power of two of them; nil is free
	n     int
}

// len is the number of publishes in the table.
func (t *inflightTable) len() int { return t.n }

// get returns the publish with packet id id, nil when none.
func (t *inflightTable) get(id uint16) *pending {
	if len(t.slots) == 0 {
		return nil
	}
	if p := t.slots[int(id)&(len(t.slots)-1)]; p != nil && p.id == id {
		return p
	}
	return nil
}

// put adds p, whose id is not in the table.
func (t *inflightTable) put(p *pending) {
	for len(t.slots) == 0 || t.slots[int(p.id)&(len(t.slots)-1)] != nil {
		t.grow()
	}
	t.slots[int(p.id)&(len(t.slots)-1)] = p
	t.n++
}

// delete removes the publish with packet id id, if there is one.
func (t *inflightTable) delete(id uint16) {
	if len(t.slots) == 0 {
		return
	}
	if i := int(id) & (len(t.slots) - 1); t.slots[i] != nil && t.slots[i].id == id {
		t.slots[i] = nil
		t.n--
	}
}

// grow doubles the table. Ids that differ modulo the old size differ
// modulo the new one, so no two publishes clash in their new slots.
func (t *inflightTable) grow() {
	old := t.slots
	t.slots = make([]*pending, max(2*len(old), 16))
	for _, p := range old {
		if p != nil {
			t.slots[int(p.id)&(len(t.slots)-1)] = p
		}
	}
}

// all yields every publish in the table, in no particular order.
func (t *inflightTable) all() iter.Seq[*pending] {
	return func(yield func(*pending) bool) {
		for _, p := range t.slots {
			if p != nil && !yield(p) {
				return
			}
		}
	}
}
