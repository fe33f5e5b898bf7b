// Command loadgen sends OTLP metrics exports (gRPC or HTTP) or legacy JSON
// reports as fast as a closed loop allows, or at a fixed open-loop rate, and
// prints one JSON object of what it measured on stdout.
//
// Bodies are built before the run. While it runs, stderr gets two lines,
// "phase measure" when warm-up ends and "phase done" when the measured window
// ends, so a caller can sample other processes' CPU over the same window.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

type config struct {
	target      string
	addr        string
	keysFile    string
	points      int
	gzip        bool
	concurrency int
	conns       int
	rate        float64
	arrival     string
	duration    time.Duration
	warmup      time.Duration
	timeout     time.Duration
	retry       bool
	retryBudget time.Duration
	agents      int
	generations int
	sink        string
	listen      string
}

func parseFlags() config {
	var c config
	flag.StringVar(&c.target, "target", "grpc", "grpc (OTLP/gRPC), http (OTLP/HTTP protobuf) or legacy-json")
	flag.StringVar(&c.addr, "addr", "127.0.0.1:4317", "grpc: host:port; http, legacy-json: base URL")
	flag.StringVar(&c.keysFile, "keys", "", "file of API keys, one per line: KEY or TENANT KEY (each key is a tenant)")
	flag.IntVar(&c.points, "points", 20, "data points per request (legacy-json: report fields)")
	flag.BoolVar(&c.gzip, "gzip", false, "gzip request bodies (compressed before the run)")
	flag.IntVar(&c.concurrency, "concurrency", 64, "closed loop: workers sending back to back; open loop: most requests in flight")
	flag.IntVar(&c.conns, "conns", 8, "grpc: TCP connections, shared round robin by workers")
	flag.Float64Var(&c.rate, "rate", 0, "open loop: requests per second in total (0: closed loop)")
	flag.StringVar(&c.arrival, "arrival", "poisson", "open loop: poisson or even spacing of send times")
	flag.DurationVar(&c.duration, "duration", 10*time.Second, "measured window")
	flag.DurationVar(&c.warmup, "warmup", 2*time.Second, "load before the measured window, not counted")
	flag.DurationVar(&c.timeout, "timeout", 10*time.Second, "deadline of one request")
	flag.BoolVar(&c.retry, "retry", false, "retry UNAVAILABLE, RESOURCE_EXHAUSTED with RetryInfo, HTTP 429/502/503/504, as OTel exporters do")
	flag.DurationVar(&c.retryBudget, "retry-budget", 10*time.Second, "with -retry: time one export may take, retries included")
	flag.IntVar(&c.agents, "agents", 2, "agents (service.instance.id) per key; series per key = points x agents")
	flag.IntVar(&c.generations, "pool", 64, "gzip and legacy-json: pre-built bodies per agent, cycled")
	flag.StringVar(&c.sink, "sink", "", "grpc or http: do not send, serve a trivial OTLP endpoint that answers OK (to measure the generator itself)")
	flag.StringVar(&c.listen, "listen", "127.0.0.1:0", "with -sink: address to listen on (the chosen one is printed on stderr)")
	flag.Parse()
	return c
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "loadgen: "+format+"\n", args...)
	os.Exit(2)
}

func readCredentials(path string) ([]Credential, error) {
	if path == "" {
		return []Credential{{Tenant: "bench", Key: "no-key"}}, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var creds []Credential
	scanner := bufio.NewScanner(f)
	for scanner.Scan() {
		fields := strings.Fields(scanner.Text())
		switch {
		case len(fields) == 0 || strings.HasPrefix(fields[0], "#"):
		case len(fields) == 1:
			creds = append(creds, Credential{Tenant: fmt.Sprintf("tenant%d", len(creds)), Key: fields[0]})
		default:
			creds = append(creds, Credential{Tenant: fields[0], Key: fields[1]})
		}
	}
	if len(creds) == 0 {
		return nil, fmt.Errorf("%s has no keys", path)
	}
	return creds, scanner.Err()
}

func buildTemplates(c config, creds []Credential, origin time.Time) ([]*Template, error) {
	var templates []*Template
	// Interleaved so that consecutive requests rotate over the tenants.
	for a := 0; a < c.agents; a++ {
		for _, cred := range creds {
			agent := fmt.Sprintf("%s-agent-%d", cred.Tenant, a)
			var t *Template
			var err error
			if c.target == "legacy-json" {
				t, err = newLegacyTemplate(cred, agent, c.points, c.generations)
			} else {
				t, err = newOTLPTemplate(cred, agent, c.points, origin.Add(-time.Hour))
				if err == nil && c.gzip {
					err = t.buildGzipPool(c.generations, origin)
				}
			}
			if err != nil {
				return nil, err
			}
			templates = append(templates, t)
		}
	}
	return templates, nil
}

// Recorder is one worker's tally; merged after the run.
type Recorder struct {
	latencies []time.Duration
	lags      []time.Duration // open loop: from scheduled to actually sent
	completed int64           // answers that arrived within the window, whenever scheduled
	statuses  map[string]int64
	errors    map[string]int64
	retries   int64
	bytes     int64
	points    int64 // in requests answered OK
}

func newRecorder() *Recorder {
	return &Recorder{statuses: map[string]int64{}, errors: map[string]int64{}}
}

func (r *Recorder) record(a Attempt, retries int, latency, lag time.Duration, size, points int) {
	r.latencies = append(r.latencies, latency)
	r.lags = append(r.lags, lag)
	r.statuses[a.Status]++
	r.retries += int64(retries)
	r.bytes += int64(size)
	if a.Status == "OK" || a.Status == "200" {
		r.points += int64(points)
	} else if len(r.errors) < 20 {
		r.errors[a.Err]++
	}
}

// Window is the measured interval: requests whose (scheduled) start falls in it count.
type Window struct{ start, end time.Time }

func (w Window) contains(t time.Time) bool { return !t.Before(w.start) && t.Before(w.end) }

// worker is one closed-loop sender.
func closedWorker(id int, c config, s Sender, bodies []*Body, w Window, r *Recorder) {
	for i := id; ; i++ {
		started := time.Now()
		if !started.Before(w.end) {
			return
		}
		b := bodies[i%len(bodies)]
		body := b.Bytes(started)
		a, retries := sendWithRetry(s, id, b.t, body, c.retry, c.retryBudget)
		now := time.Now()
		if w.contains(now) {
			r.completed++
		}
		if w.contains(started) {
			r.record(a, retries, now.Sub(started), 0, len(body), b.t.Points)
		}
	}
}

// openLoop schedules `rate` requests per second; latency counts from each
// request's scheduled time, so time spent queued behind busy senders (the
// server being slow) is in it: no coordinated omission. Requests scheduled in
// the window are still sent after it closes, until the request timeout has
// passed too; those left then are counted as unsent.
func openLoop(c config, s Sender, templates []*Template, w Window, recorders []*Recorder) int64 {
	queue := make(chan time.Time, 1<<16)
	var unsent atomic.Int64
	var wg sync.WaitGroup
	for id := range recorders {
		wg.Add(1)
		go func(id int) {
			defer wg.Done()
			bodies := make([]*Body, len(templates))
			for i, t := range templates {
				bodies[i] = newBody(t)
			}
			i := id
			for scheduled := range queue {
				if !time.Now().Before(w.end.Add(c.timeout)) {
					unsent.Add(1)
					continue
				}
				b := bodies[i%len(bodies)]
				i++
				sent := time.Now()
				body := b.Bytes(sent)
				a, retries := sendWithRetry(s, id, b.t, body, c.retry, c.retryBudget)
				now := time.Now()
				if w.contains(now) {
					recorders[id].completed++
				}
				if w.contains(scheduled) {
					lag := sent.Sub(scheduled)
					recorders[id].record(a, retries, now.Sub(scheduled), lag, len(body), b.t.Points)
				}
			}
		}(id)
	}
	mean := float64(time.Second) / c.rate
	for next := time.Now(); next.Before(w.end); {
		if d := time.Until(next); d > 0 {
			preciseSleep(d)
		}
		queue <- next
		gap := mean
		if c.arrival == "poisson" {
			gap = rand.ExpFloat64() * mean
		}
		next = next.Add(time.Duration(gap))
	}
	close(queue)
	wg.Wait()
	return unsent.Load()
}

// preciseSleep sleeps with nanosleep(2): within ~0.1 ms, where time.Sleep
// wakes up to ~1 ms late here, which would show as latency in the open loop.
func preciseSleep(d time.Duration) {
	ts := syscall.NsecToTimespec(int64(d))
	_ = syscall.Nanosleep(&ts, nil)
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

func percentile(sorted []time.Duration, q float64) float64 {
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return float64(sorted[max(i, 0)]) / 1e6
}

// summary is p50, p90, p99, max and mean in milliseconds (nulls when empty).
func summary(durations []time.Duration) map[string]any {
	if len(durations) == 0 {
		return map[string]any{"p50": nil, "p90": nil, "p99": nil, "max": nil, "mean": nil}
	}
	slices.Sort(durations)
	var sum time.Duration
	for _, d := range durations {
		sum += d
	}
	return map[string]any{
		"p50":  percentile(durations, 0.50),
		"p90":  percentile(durations, 0.90),
		"p99":  percentile(durations, 0.99),
		"max":  percentile(durations, 1.0),
		"mean": float64(sum) / float64(len(durations)) / 1e6,
	}
}

func main() {
	c := parseFlags()
	if c.sink != "" {
		if err := serveSink(c.sink, c.listen); err != nil {
			fail("sink: %v", err)
		}
		return
	}
	switch c.target {
	case "grpc", "http", "legacy-json":
	default:
		fail("-target must be grpc, http or legacy-json, not %q", c.target)
	}
	if c.points < 1 || c.concurrency < 1 || c.conns < 1 || c.agents < 1 || c.generations < 1 {
		fail("-points, -concurrency, -conns, -agents and -pool must be at least 1")
	}
	if c.arrival != "poisson" && c.arrival != "even" {
		fail("-arrival must be poisson or even")
	}
	if c.target == "legacy-json" && c.gzip {
		fail("-gzip is for OTLP targets")
	}
	creds, err := readCredentials(c.keysFile)
	if err != nil {
		fail("keys: %v", err)
	}
	origin := time.Now()
	templates, err := buildTemplates(c, creds, origin)
	if err != nil {
		fail("building bodies: %v", err)
	}
	var s Sender
	if c.target == "grpc" {
		s, err = newGRPCSender(c.addr, c.conns, creds, c.gzip, c.timeout, c.retry)
		if err != nil {
			fail("grpc: %v", err)
		}
	} else {
		s = newHTTPSender(c.addr, c.target, c.concurrency, c.gzip, c.timeout)
	}
	defer s.Close()

	start := time.Now()
	w := Window{start: start.Add(c.warmup), end: start.Add(c.warmup + c.duration)}
	var cpuStart, cpuEnd float64
	phases := sync.WaitGroup{}
	phases.Add(1)
	go func() {
		defer phases.Done()
		time.Sleep(time.Until(w.start))
		cpuStart = cpuSeconds()
		fmt.Fprintln(os.Stderr, "phase measure")
		time.Sleep(time.Until(w.end))
		cpuEnd = cpuSeconds()
		fmt.Fprintln(os.Stderr, "phase done")
	}()

	recorders := make([]*Recorder, c.concurrency)
	for i := range recorders {
		recorders[i] = newRecorder()
	}
	var unsent int64
	if c.rate > 0 {
		unsent = openLoop(c, s, templates, w, recorders)
	} else {
		var wg sync.WaitGroup
		for id := range recorders {
			wg.Add(1)
			go func(id int) {
				defer wg.Done()
				bodies := make([]*Body, len(templates))
				for i, t := range templates {
					bodies[i] = newBody(t)
				}
				closedWorker(id, c, s, bodies, w, recorders[id])
			}(id)
		}
		wg.Wait()
	}
	phases.Wait()
	report(c, creds, w, recorders, unsent, cpuEnd-cpuStart)
}

func report(c config, creds []Credential, w Window, recorders []*Recorder, unsent int64, cpu float64) {
	total := newRecorder()
	for _, r := range recorders {
		total.latencies = append(total.latencies, r.latencies...)
		total.lags = append(total.lags, r.lags...)
		total.completed += r.completed
		for k, v := range r.statuses {
			total.statuses[k] += v
		}
		for k, v := range r.errors {
			total.errors[k] += v
		}
		total.retries += r.retries
		total.bytes += r.bytes
		total.points += r.points
	}
	n := int64(len(total.latencies))
	ok := total.statuses["OK"] + total.statuses["200"]
	seconds := w.end.Sub(w.start).Seconds()
	errs := make([]string, 0, len(total.errors))
	for e := range total.errors {
		errs = append(errs, e)
	}
	slices.Sort(errs)
	if len(errs) > 5 {
		errs = errs[:5]
	}
	mode, rate := "closed", any(nil)
	if c.rate > 0 {
		mode, rate = "open", c.rate
	}
	out := map[string]any{
		"target":             c.target,
		"addr":               c.addr,
		"mode":               mode,
		"rate_target":        rate,
		"arrival":            c.arrival,
		"concurrency":        c.concurrency,
		"points_per_request": c.points,
		"gzip":               c.gzip,
		"tenants":            len(creds),
		"series_per_tenant":  c.points * c.agents,
		"duration_s":         seconds,
		"requests":           n,
		"ok":                 ok,
		"statuses":           total.statuses,
		"retries":            total.retries,
		"unsent":             unsent,
		"requests_per_s":     float64(n) / seconds,
		"ok_per_s":           float64(ok) / seconds,
		"points_per_s":       float64(total.points) / seconds,
		"bytes_per_request":  float64(total.bytes) / math.Max(float64(n), 1),
		"latency_ms":         summary(total.latencies),
		"lag_ms":             summary(total.lags),
		"completed_per_s":    float64(total.completed) / seconds,
		"cpu_s":              cpu,
		"cpu_us_per_request": cpu * 1e6 / math.Max(float64(n), 1),
		"errors":             errs,
	}
	enc := json.NewEncoder(os.Stdout)
	if err := enc.Encode(out); err != nil {
		fail("writing the result: %v", err)
	}
}
