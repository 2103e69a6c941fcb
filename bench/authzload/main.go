// Command authzload is a load generator for Envoy ext_authz gRPC servers.
//
// It replays CheckRequests built from internal/testbed/policygen's realistic traffic
// (principals, destination principals, context extensions, pseudo-headers,
// queries inside paths, as Envoy sends them) in two modes: closed loop
// (-mode max: N workers each send the next request as soon as the last one
// is answered: maximum throughput) and open loop (-mode rate: requests are
// scheduled at a constant rate by up to N workers in flight).
//
// Latency is measured from the moment a request is sent. In open loop it is
// also measured from its scheduled time, and the generator's lateness (sent
// minus scheduled) is reported apart: Go's timers wake a sleeping worker up
// to a millisecond late on Linux, which is the generator's delay, not the
// server's; a request that waited for a free worker (all N in flight: the
// server falling behind) is counted as backlogged, so that queueing cannot
// hide behind the from-send figure.
//
// Subcommands:
//
//	authzload compare  run the trivial server and meshguard side by side and print the ratio
//	authzload run      load one server at -addr
//	authzload trivial  serve an always-OK Check (the baseline)
//	authzload bundle   write the realistic policy bundle used by compare
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: authzload compare|run|trivial|bundle [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "compare":
		err = compareMain(os.Args[2:])
	case "run":
		err = runMain(os.Args[2:])
	case "trivial":
		err = trivialMain(os.Args[2:])
	case "bundle":
		err = bundleMain(os.Args[2:])
	default:
		err = fmt.Errorf("unknown subcommand %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "authzload:", err)
		os.Exit(1)
	}
}

// loadConfig describes one measurement.
type loadConfig struct {
	addr        string
	mode        string // max or rate
	concurrency int
	conns       int
	rate        float64
	duration    time.Duration
	warmup      time.Duration
	// serverPID, when set, is the server process whose CPU time over the
	// measured period is recorded (Linux /proc), the steadier figure on a
	// shared machine: throughput moves with everything else that runs.
	serverPID int
}

// result of one measurement.
type result struct {
	requests, errors, allowed, denied int64
	elapsed                           time.Duration
	lat                               []time.Duration // from send, sorted
	// Open loop only: latency from the scheduled time and the
	// generator's lateness (both sorted), and the requests sent more than
	// backlogAfter late because every worker was busy.
	latSched, late []time.Duration
	backlogged     int64
	serverCPU      time.Duration // 0 when not measured
}

// backlogAfter is the lateness past which a request that found no free
// worker counts as backlogged.
const backlogAfter = time.Millisecond

// cpuPerRequest is the server's CPU time per answered request.
func (r *result) cpuPerRequest() time.Duration {
	if r.requests == 0 {
		return 0
	}
	return r.serverCPU / time.Duration(r.requests)
}

func (r *result) rps() float64 { return float64(r.requests) / r.elapsed.Seconds() }

func (r *result) quantile(q float64) time.Duration { return quantile(r.lat, q) }

// quantile of sorted samples.
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[int(q*float64(len(sorted)-1))]
}

// openLoop describes the open-loop figures: from the scheduled time, and
// the generator's own lateness.
func (r *result) openLoop() string {
	if r.latSched == nil {
		return ""
	}
	us := func(d time.Duration) time.Duration { return d.Round(time.Microsecond) }
	return fmt.Sprintf("from schedule p50 %s p99 %s; generator late p50 %s p99 %s; backlogged %d",
		us(quantile(r.latSched, 0.5)), us(quantile(r.latSched, 0.99)), us(quantile(r.late, 0.5)), us(quantile(r.late, 0.99)), r.backlogged)
}

func (r *result) String() string {
	cpu := ""
	if r.serverCPU > 0 {
		cpu = fmt.Sprintf("  server CPU %5.1fµs/req", float64(r.cpuPerRequest())/float64(time.Microsecond))
	}
	open := ""
	if r.latSched != nil {
		open = "\n            " + r.openLoop()
	}
	return fmt.Sprintf("%9.0f rps  p50 %8s  p99 %8s%s  (n=%d allow=%d deny=%d errors=%d)%s",
		r.rps(), r.quantile(0.50).Round(time.Microsecond), r.quantile(0.99).Round(time.Microsecond), cpu,
		r.requests, r.allowed, r.denied, r.errors, open)
}

func runMain(args []string) error {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	c := loadConfig{}
	fs.StringVar(&c.addr, "addr", "127.0.0.1:9191", "server address (plaintext gRPC)")
	fs.StringVar(&c.mode, "mode", "max", "max (closed loop) or rate (open loop)")
	fs.IntVar(&c.concurrency, "concurrency", 32, "workers (max) or the in-flight limit (rate)")
	fs.IntVar(&c.conns, "conns", 4, "gRPC connections")
	fs.Float64Var(&c.rate, "rate", 5000, "offered requests per second (rate mode)")
	fs.DurationVar(&c.duration, "duration", 5*time.Second, "measurement time")
	fs.DurationVar(&c.warmup, "warmup", time.Second, "warm-up time, not measured")
	rules := fs.Int("rules", 1000, "size of the realistic policy the requests are drawn from")
	_ = fs.Parse(args)
	reqs, err := checkRequests(*rules, 1000)
	if err != nil {
		return err
	}
	r, err := load(context.Background(), c, reqs)
	if err != nil {
		return err
	}
	fmt.Printf("%s %s: %s\n", c.addr, c.mode, r)
	return nil
}

// load runs one measurement against c.addr.
func load(ctx context.Context, c loadConfig, reqs []*encodedRequest) (*result, error) {
	conns := make([]*grpc.ClientConn, c.conns)
	for i := range conns {
		cc, err := grpc.NewClient(c.addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.ForceCodec(statusCodec{})))
		if err != nil {
			return nil, err
		}
		defer cc.Close()
		conns[i] = cc
	}
	if c.warmup > 0 {
		w := c
		w.duration, w.warmup, w.mode = c.warmup, 0, "max"
		if _, err := measure(ctx, w, conns, reqs); err != nil {
			return nil, err
		}
	}
	var before time.Duration
	if c.serverPID > 0 {
		var err error
		if before, err = processCPU(c.serverPID); err != nil {
			return nil, err
		}
	}
	r, err := measure(ctx, c, conns, reqs)
	if err == nil && c.serverPID > 0 {
		var after time.Duration
		if after, err = processCPU(c.serverPID); err == nil {
			r.serverCPU = after - before
		}
	}
	return r, err
}

// processCPU is the user+system CPU time pid has used, from
// /proc/PID/stat (fields 14 and 15, in clock ticks of 1/100 s: the
// kernel's USER_HZ on every Linux architecture Go supports).
func processCPU(pid int) (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is parenthesised and may hold spaces.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	var ticks int64
	for _, s := range f[11:13] { // utime, stime: fields 14 and 15 overall
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * (time.Second / 100), nil
}

func measure(ctx context.Context, c loadConfig, conns []*grpc.ClientConn, reqs []*encodedRequest) (*result, error) {
	var (
		next                  atomic.Int64
		errs, allowed, denied atomic.Int64
		backlogged            atomic.Int64
		mu                    sync.Mutex
		all                   samples
		wg                    sync.WaitGroup
		firstErr              atomic.Value
		start                 = time.Now()
		deadline              = start.Add(c.duration)
	)
	// do sends request i, scheduled at sched, and records its latencies.
	do := func(i int64, sched time.Time, s *samples) {
		req := reqs[i%int64(len(reqs))]
		var resp authv3.CheckResponse
		sent := time.Now()
		err := conns[i%int64(len(conns))].Invoke(ctx, authv3.Authorization_Check_FullMethodName, req, &resp)
		end := time.Now()
		switch {
		case err != nil:
			errs.Add(1)
			firstErr.CompareAndSwap(nil, err)
		case resp.GetStatus().GetCode() == int32(codes.OK):
			allowed.Add(1)
		default:
			denied.Add(1)
		}
		s.lat = append(s.lat, end.Sub(sent))
		if c.mode == "rate" {
			s.latSched = append(s.latSched, end.Sub(sched))
			s.late = append(s.late, sent.Sub(sched))
		}
	}
	collect := func(s *samples) {
		mu.Lock()
		all.lat = append(all.lat, s.lat...)
		all.latSched = append(all.latSched, s.latSched...)
		all.late = append(all.late, s.late...)
		mu.Unlock()
	}
	switch c.mode {
	case "max":
		for w := 0; w < c.concurrency; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s := samples{lat: make([]time.Duration, 0, 1<<10)}
				for time.Now().Before(deadline) {
					do(next.Add(1), time.Now(), &s)
				}
				collect(&s)
			}()
		}
	case "rate":
		if c.rate <= 0 {
			return nil, fmt.Errorf("rate must be positive")
		}
		interval := time.Duration(float64(time.Second) / c.rate)
		total := int64(c.duration / interval)
		// Workers take the next request index and wait for its scheduled
		// time. A worker that takes a request already past it found no
		// free worker in time: the request is backlogged if that made it
		// more than backlogAfter late.
		for w := 0; w < c.concurrency; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				// Room for twice a worker's share, made before the clock
				// matters: growing (or over-allocating: hundreds of workers)
				// while requests are due would delay them.
				share := 2*int(total)/c.concurrency + 16
				s := samples{lat: make([]time.Duration, 0, share), latSched: make([]time.Duration, 0, share), late: make([]time.Duration, 0, share)}
				for {
					i := next.Add(1) - 1
					if i >= total {
						break
					}
					sched := start.Add(time.Duration(i) * interval)
					if d := time.Until(sched); d > 0 {
						time.Sleep(d)
					} else if -d > backlogAfter {
						backlogged.Add(1)
					}
					do(i, sched, &s)
				}
				collect(&s)
			}()
		}
	default:
		return nil, fmt.Errorf("unknown mode %q", c.mode)
	}
	wg.Wait()
	elapsed := time.Since(start)
	for _, l := range [][]time.Duration{all.lat, all.latSched, all.late} {
		slices.Sort(l)
	}
	r := &result{requests: int64(len(all.lat)), errors: errs.Load(), allowed: allowed.Load(), denied: denied.Load(), elapsed: elapsed,
		lat: all.lat, latSched: all.latSched, late: all.late, backlogged: backlogged.Load()}
	if r.errors > 0 {
		return r, fmt.Errorf("%d errors, first: %v", r.errors, firstErr.Load())
	}
	return r, nil
}

// samples are one worker's (then all workers') latencies.
type samples struct{ lat, latSched, late []time.Duration }
