package gateway

import ("testing";"context";"time";"fmt")

func TestZZPerf(t *testing.T) {
	b := newMemBuffer()
	for i := 0; i < 20000; i++ {
		dev := fmt.Sprintf("truck-%04d", i%20)
		rec := &Record{ID: NewID(time.Now()), Device: dev, Stream: "position", Protocol: ProtocolMQTT, Topic: "devices/"+dev+"/position", ReceivedAt: time.Now(), Payload: []byte(`{"device":"truck-0001","seq":123,"ts":"2026-11-25T23:14:57.324123456Z","run":"x","lat":53.123456,"lon":10.123456,"speed":83.2,"heading":211.3,"odometer":123456.7}`)}
		b.Append(EncodeRecord(nil, rec), func(error){})
	}
	sink, err := NewKafkaSink(KafkaOptions{Brokers: []string{"127.0.0.1:19092"}}, 2000, nil)
	if err != nil { t.Fatal(err) }
	router, _ := NewRouter([]Route{{Match: "devices/{device}/{stream}", Topic: fmt.Sprintf("zzperf%d.{stream}", time.Now().Unix())}})
	p := NewPipeline(EgressOptions{}, b, nil, router, sink, sink.MaxBatchBytes(), "gw", nil)
	ctx, cancel := context.WithCancel(context.Background())
	go p.Run(ctx)
	start := time.Now()
	for b.Committed() < 100 { time.Sleep(time.Millisecond) }
	t.Logf("first commit after %s", time.Since(start))
	start = time.Now()
	for b.Committed() < 20000 { time.Sleep(time.Millisecond) }
	el := time.Since(start)
	t.Logf("20000 in %s = %.0f/s; stats %+v", el, 19900/el.Seconds(), p.Stats())
	cancel()
}
