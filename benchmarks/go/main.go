// nsq-bench-go: the go-nsq reference client for rxnsq's benchmarks (benchmarks/run.py).
//
// It speaks the same small worker protocol as the Python workers in benchmarks/workers:
// it takes the scenario on the command line, prints "READY" when it is subscribed (latency
// mode), and prints one line "RESULT {json}" at the end with the count, the measured wall
// time, the process CPU time spent in that interval and the peak RSS.
//
//	nsq-bench-go -mode consume -addr 127.0.0.1:4150 -topic t -channel c -count 200000 -total 204500 -mif 2500
//	nsq-bench-go -mode pub     -addr 127.0.0.1:4150 -topic t -count 200000 -window 10000
//	nsq-bench-go -mode mpub    -addr 127.0.0.1:4150 -topic t -count 200000 -batch 100 -window 10000
//	nsq-bench-go -mode latency -addr 127.0.0.1:4150 -topic t -channel c -count 10000 -mif 200
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	nsq "github.com/nsqio/go-nsq"
)

type options struct {
	mode, addr, topic, channel string
	count, total, mif, size    int
	batch                      int
	window, warmup, obuf       int
	timeout                    time.Duration
}

// meter measures the wall and CPU time of the interval between start and stop.
type meter struct {
	t0, t1     time.Time
	cpu0, cpu1 float64
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return float64(ru.Utime.Sec+ru.Stime.Sec) + float64(ru.Utime.Usec+ru.Stime.Usec)/1e6
}

// maxRSSKiB is the peak resident set (VmHWM). Not getrusage's Maxrss: on Linux that survives
// execve, so it would include the RSS of the Python runner that started this process.
func maxRSSKiB() int64 {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			fields := strings.Fields(line)
			if len(fields) >= 2 {
				kib, _ := strconv.ParseInt(fields[1], 10, 64)
				return kib
			}
		}
	}
	return 0
}

func (m *meter) start() { m.t0 = time.Now(); m.cpu0 = cpuSeconds() }
func (m *meter) stop()  { m.t1 = time.Now(); m.cpu1 = cpuSeconds() }

func emit(o *options, m *meter, count int, extra map[string]any) {
	result := map[string]any{
		"client":      "go-nsq",
		"mode":        o.mode,
		"count":       count,
		"elapsed":     m.t1.Sub(m.t0).Seconds(),
		"cpu":         m.cpu1 - m.cpu0,
		"max_rss_kib": maxRSSKiB(),
		"version":     nsq.VERSION,
	}
	for k, v := range extra {
		result[k] = v
	}
	line, _ := json.Marshal(result)
	fmt.Printf("RESULT %s\n", line)
}

func config(o *options) *nsq.Config {
	cfg := nsq.NewConfig()
	cfg.MaxInFlight = o.mif
	if o.obuf != 0 {
		cfg.OutputBufferSize = int64(o.obuf)
	}
	return cfg
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "nsq-bench-go: "+format+"\n", args...)
	os.Exit(1)
}

// consume measures count messages with a handler that returns nil (FIN), one goroutine, and
// goes on to total (the whole backlog), then stops cleanly so every FIN reaches nsqd.
func consume(o *options) {
	c, err := nsq.NewConsumer(o.topic, o.channel, config(o))
	if err != nil {
		fail("%v", err)
	}
	c.SetLoggerLevel(nsq.LogLevelError)
	var m meter
	done := make(chan struct{})
	seen := 0
	c.AddHandler(nsq.HandlerFunc(func(msg *nsq.Message) error {
		seen++
		if seen == 1 {
			m.start()
		}
		if seen == o.count {
			m.stop()
		}
		if seen == o.total {
			close(done)
		}
		return nil
	}))
	if err := c.ConnectToNSQD(o.addr); err != nil {
		fail("%v", err)
	}
	select {
	case <-done:
	case <-time.After(o.timeout):
		fail("consume: timed out after %d of %d messages", seen, o.total)
	}
	c.Stop()
	<-c.StopChan
	emit(o, &m, o.count, nil)
}

// latency reads the publish time (19 decimal digits of Unix ns) at the start of each body.
func latency(o *options) {
	c, err := nsq.NewConsumer(o.topic, o.channel, config(o))
	if err != nil {
		fail("%v", err)
	}
	c.SetLoggerLevel(nsq.LogLevelError)
	var m meter
	done := make(chan struct{})
	samples := make([]int64, 0, o.count)
	seen := 0
	c.AddHandler(nsq.HandlerFunc(func(msg *nsq.Message) error {
		now := time.Now().UnixNano()
		sent, err := strconv.ParseInt(string(msg.Body[:19]), 10, 64)
		if err != nil {
			return nil
		}
		seen++
		if seen == 1 {
			m.start()
		}
		if seen > o.warmup {
			samples = append(samples, now-sent)
		}
		if seen == o.count {
			m.stop()
			close(done)
		}
		return nil
	}))
	if err := c.ConnectToNSQD(o.addr); err != nil {
		fail("%v", err)
	}
	// ConnectToNSQD returns after IDENTIFY and SUB; RDY follows at once.
	time.Sleep(50 * time.Millisecond)
	fmt.Println("READY")
	select {
	case <-done:
	case <-time.After(o.timeout):
		fail("latency: timed out after %d of %d messages", seen, o.count)
	}
	c.Stop()
	<-c.StopChan
	sort.Slice(samples, func(i, j int) bool { return samples[i] < samples[j] })
	pct := func(p float64) float64 {
		if len(samples) == 0 {
			return 0
		}
		i := int(p * float64(len(samples)-1))
		return float64(samples[i]) / 1e6
	}
	emit(o, &m, o.count, map[string]any{
		"p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": pct(1.0), "samples": len(samples),
	})
}

// publish sends count bodies one PUB at a time (mode pub) or in MPUBs of batch (mode mpub),
// pipelined: at most window messages unconfirmed, confirmations counted from doneChan.
func publish(o *options) {
	p, err := nsq.NewProducer(o.addr, nsq.NewConfig())
	if err != nil {
		fail("%v", err)
	}
	p.SetLoggerLevel(nsq.LogLevelError)
	if err := p.Ping(); err != nil { // connects, not measured
		fail("%v", err)
	}
	body := bytes.Repeat([]byte("x"), o.size)
	per := 1
	if o.mode == "mpub" {
		per = o.batch
	}
	commands := o.count / per
	slots := o.window / per
	if slots < 1 {
		slots = 1
	}
	sem := make(chan struct{}, slots)
	doneChan := make(chan *nsq.ProducerTransaction, slots)
	var failed int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < commands; i++ {
			t := <-doneChan
			if t.Error != nil {
				atomic.AddInt64(&failed, 1)
			}
			<-sem
		}
	}()
	batch := make([][]byte, per)
	for i := range batch {
		batch[i] = body
	}
	var m meter
	m.start()
	for i := 0; i < commands; i++ {
		sem <- struct{}{}
		if per == 1 {
			err = p.PublishAsync(o.topic, body, doneChan)
		} else {
			err = p.MultiPublishAsync(o.topic, batch, doneChan)
		}
		if err != nil {
			fail("%v", err)
		}
	}
	wg.Wait()
	m.stop()
	if failed > 0 {
		fail("%d publishes failed", failed)
	}
	emit(o, &m, commands*per, map[string]any{"commands": commands})
	p.Stop()
}

func main() {
	var o options
	flag.StringVar(&o.mode, "mode", "consume", "consume | latency | pub | mpub")
	flag.StringVar(&o.addr, "addr", "127.0.0.1:4150", "nsqd TCP address")
	flag.StringVar(&o.topic, "topic", "bench", "topic")
	flag.StringVar(&o.channel, "channel", "bench", "channel")
	flag.IntVar(&o.count, "count", 100000, "messages measured")
	flag.IntVar(&o.total, "total", 0, "consume: messages consumed in all (default count)")
	flag.IntVar(&o.mif, "mif", 2500, "max in flight")
	flag.IntVar(&o.size, "size", 200, "body size (publish)")
	flag.IntVar(&o.batch, "batch", 100, "messages per MPUB")
	flag.IntVar(&o.window, "window", 10000, "unconfirmed messages at most (publish)")
	flag.IntVar(&o.warmup, "warmup", 0, "latency samples to skip")
	flag.IntVar(&o.obuf, "obuf", 0, "IDENTIFY output_buffer_size (0: go-nsq's default)")
	flag.DurationVar(&o.timeout, "timeout", 10*time.Minute, "give up after")
	flag.Parse()
	if o.total < o.count {
		o.total = o.count
	}
	switch o.mode {
	case "consume":
		consume(&o)
	case "latency":
		latency(&o)
	case "pub", "mpub":
		publish(&o)
	default:
		fail("unknown mode %q", o.mode)
	}
	os.Exit(0)
}
