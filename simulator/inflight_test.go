package simulator

import (
	"math/rand/v2"
	"testing"
)

// TestInflightTable runs the table against a map with the traffic a device
// makes: ids handed out in turn and wrapping, mostly acked in order, some
// late or never, so that slots clash and the table grows.
func TestInflightTable(t *testing.T) {
	for _, lateEvery := range []int{0, 7, 1000} {
		var tab inflightTable
		want := map[uint16]*pending{}
		rng := rand.New(rand.NewPCG(1, uint64(lateEvery)))
		var next uint16
		var order []uint16
		for range 300000 {
			if len(order) < 100 { // send
				for {
					next++
					if next != 0 && want[next] == nil {
						break
					}
				}
				if tab.get(next) != nil {
					t.Fatalf("id %d in the table before it was sent", next)
				}
				p := &pending{id: next}
				tab.put(p)
				want[next] = p
				order = append(order, next)
				continue
			}
			// Ack the oldest, or now and then one at random, or leave
			// one in flight for good.
			i := 0
			if lateEvery > 0 && rng.IntN(lateEvery) == 0 {
				i = rng.IntN(len(order))
			}
			id := order[i]
			order = append(order[:i], order[i+1:]...)
			if lateEvery == 1000 && rng.IntN(50) == 0 {
				continue // never acked, stays in the table
			}
			if tab.get(id) != want[id] {
				t.Fatalf("get(%d) = %v, want %v", id, tab.get(id), want[id])
			}
			tab.delete(id)
			tab.delete(id) // a repeated ack
			delete(want, id)
			if tab.get(id) != nil {
				t.Fatalf("id %d still there after delete", id)
			}
		}
		if tab.len() != len(want) {
			t.Fatalf("len %d, want %d", tab.len(), len(want))
		}
		n := 0
		for p := range tab.all() {
			if want[p.id] != p {
				t.Fatalf("all yields id %d, not in the map", p.id)
			}
			n++
		}
		if n != len(want) {
			t.Fatalf("all yields %d, want %d", n, len(want))
		}
		t.Logf("late 1 in %d: %d left in flight, %d slots", lateEvery, len(want), len(tab.slots))
	}
}
