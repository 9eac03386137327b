package simulator

import "testing"

func BenchmarkTruckNext(b *testing.B) {
	devs := testFleet(b, Options{Trucks: 1, Seed: 1})
	tr := newTruck(&devs[0], 1, 1)
	b.ReportAllocs()
	for b.Loop() {
		tr.next()
	}
}
