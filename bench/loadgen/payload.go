package main

// Request bodies, built once before the run.
//
// An uncompressed OTLP body is patched in place before each send: every
// timestamp and value of a NumberDataPoint is a fixed-width field (fixed64,
// sfixed64, double), so the current time and a value that grows with it are
// eight-byte writes at offsets found once, after marshalling with sentinels.
// Compressed (gzip) and legacy JSON bodies cannot be patched cheaply: a pool
// of generations is built ahead, each later in time than the one before,
// and the pool is cycled (values start over when it wraps).

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"sync/atomic"
	"time"

	colmetrics "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	common "go.opentelemetry.io/proto/otlp/common/v1"
	metrics "go.opentelemetry.io/proto/otlp/metrics/v1"
	resource "go.opentelemetry.io/proto/otlp/resource/v1"
	"google.golang.org/protobuf/proto"
)

type metricDef struct {
	name, unit string
	sum        bool // a cumulative monotonic Sum of ints, else a Gauge of doubles
}

// The instruments otel_agents exports; points are spread over them round robin.
var metricDefs = []metricDef{
	{"connector.bytes_sent", "By", true},
	{"connector.records_sent", "{record}", true},
	{"connector.queries_processed", "{query}", true},
	{"connector.errors", "{error}", true},
	{"agent.flows_executed", "{flow}", true},
	{"agent.tasks_executed", "{task}", true},
	{"connector.uptime", "s", false},
	{"connector.connected", "", false},
	{"connector.certificate_expiry_days", "", false},
	{"agent.last_flow_duration", "s", false},
}

// Credential is one line of the keys file: a tenant's API key.
type Credential struct {
	Tenant string
	Key    string
}

// Template is the body of one agent of one tenant.
type Template struct {
	Cred   Credential
	Agent  string
	Points int
	start  time.Time // the agent's start: counters count from it
	// raw is the uncompressed protobuf with its patchable offsets (OTLP targets).
	raw      []byte
	timeOffs []int
	intOffs  []int
	dblOffs  []int
	// pool holds pre-built bodies (gzip or JSON), cycled by all workers in turn.
	pool   [][]byte
	cursor atomic.Uint64
}

const (
	sentinelTime  = uint64(0x7e57_a11c_0000_0000)
	sentinelInt   = uint64(0x5e71_ba5e_0000_0000)
	sentinelFloat = 1.2345678e-300
)

func stringAttr(key, value string) *common.KeyValue {
	return &common.KeyValue{Key: key, Value: &common.AnyValue{Value: &common.AnyValue_StringValue{StringValue: value}}}
}

// buildRequest is the OTLP request of one agent with `points` data points, with
// sentinel timestamps and values (unique per point) when sentinels is true.
func buildRequest(cred Credential, agent string, points int, startNs uint64) *colmetrics.ExportMetricsServiceRequest {
	byMetric := make([]*metrics.Metric, 0, len(metricDefs))
	for i := 0; i < points; i++ {
		def := metricDefs[i%len(metricDefs)]
		if i < len(metricDefs) {
			m := &metrics.Metric{Name: def.name, Unit: def.unit}
			if def.sum {
				m.Data = &metrics.Metric_Sum{Sum: &metrics.Sum{
					AggregationTemporality: metrics.AggregationTemporality_AGGREGATION_TEMPORALITY_CUMULATIVE,
					IsMonotonic:            true,
				}}
			} else {
				m.Data = &metrics.Metric_Gauge{Gauge: &metrics.Gauge{}}
			}
			byMetric = append(byMetric, m)
		}
		m := byMetric[i%len(metricDefs)]
		p := &metrics.NumberDataPoint{
			Attributes: []*common.KeyValue{
				stringAttr("stream", fmt.Sprintf("stream-%d", i/len(metricDefs))),
				stringAttr("direction", []string{"upstream", "downstream"}[i%2]),
			},
			TimeUnixNano: sentinelTime + uint64(i),
		}
		if def.sum {
			p.StartTimeUnixNano = startNs
			p.Value = &metrics.NumberDataPoint_AsInt{AsInt: int64(sentinelInt + uint64(i))}
			m.GetSum().DataPoints = append(m.GetSum().DataPoints, p)
		} else {
			p.Value = &metrics.NumberDataPoint_AsDouble{AsDouble: sentinelFloat * float64(i+1)}
			m.GetGauge().DataPoints = append(m.GetGauge().DataPoints, p)
		}
	}
	return &colmetrics.ExportMetricsServiceRequest{ResourceMetrics: []*metrics.ResourceMetrics{{
		Resource: &resource.Resource{Attributes: []*common.KeyValue{
			stringAttr("service.name", "bench-connector"),
			stringAttr("service.instance.id", agent),
			stringAttr("service.version", "2.4.1"),
			stringAttr("agent.type", "connector"),
		}},
		ScopeMetrics: []*metrics.ScopeMetrics{{
			Scope:   &common.InstrumentationScope{Name: "otel_agents", Version: "0.1.0"},
			Metrics: byMetric,
		}},
	}}}
}

func le64(v uint64) []byte {
	b := make([]byte, 8)
	binary.LittleEndian.PutUint64(b, v)
	return b
}

func offsetOf(body, pattern []byte) (int, error) {
	at := bytes.Index(body, pattern)
	if at < 0 || bytes.Index(body[at+1:], pattern) >= 0 {
		return 0, fmt.Errorf("sentinel %x not found exactly once", pattern)
	}
	return at, nil
}

// newOTLPTemplate marshals an agent's request and finds its patchable fields.
func newOTLPTemplate(cred Credential, agent string, points int, start time.Time) (*Template, error) {
	request := buildRequest(cred, agent, points, uint64(start.UnixNano()))
	raw, err := proto.MarshalOptions{Deterministic: true}.Marshal(request)
	if err != nil {
		return nil, err
	}
	t := &Template{Cred: cred, Agent: agent, Points: points, raw: raw, start: start}
	for i := 0; i < points; i++ {
		off, err := offsetOf(raw, le64(sentinelTime+uint64(i)))
		if err != nil {
			return nil, err
		}
		t.timeOffs = append(t.timeOffs, off)
		if metricDefs[i%len(metricDefs)].sum {
			off, err = offsetOf(raw, le64(sentinelInt+uint64(i)))
			t.intOffs = append(t.intOffs, off)
		} else {
			off, err = offsetOf(raw, le64(math.Float64bits(sentinelFloat*float64(i+1))))
			t.dblOffs = append(t.dblOffs, off)
		}
		if err != nil {
			return nil, err
		}
	}
	return t, nil
}

// patch writes time `now` and values that grow with it into body (a copy of t.raw).
func (t *Template) patch(body []byte, now time.Time) {
	ns := uint64(now.UnixNano())
	elapsed := now.Sub(t.start)
	for _, off := range t.timeOffs {
		binary.LittleEndian.PutUint64(body[off:], ns)
	}
	// A counter grows by 1,000,000 per second since its start, plus a per-series
	// offset: monotonic in time whichever worker sends, so interleaved senders
	// never go backwards.
	grow := uint64(elapsed.Microseconds())
	for i, off := range t.intOffs {
		binary.LittleEndian.PutUint64(body[off:], uint64(i)*1_000_000+grow)
	}
	uptime := elapsed.Seconds()
	for i, off := range t.dblOffs {
		binary.LittleEndian.PutUint64(body[off:], math.Float64bits(uptime+float64(i)))
	}
}

// buildGzipPool pre-compresses `generations` bodies, 100 ms apart, all before
// `origin`: a timestamp in the future would make the Collector ignore the
// points of later runs until that time.
func (t *Template) buildGzipPool(generations int, origin time.Time) error {
	for g := 0; g < generations; g++ {
		body := append([]byte(nil), t.raw...)
		t.patch(body, origin.Add(-time.Duration(generations-g)*100*time.Millisecond))
		var buf bytes.Buffer
		w := gzip.NewWriter(&buf)
		if _, err := w.Write(body); err != nil {
			return err
		}
		if err := w.Close(); err != nil {
			return err
		}
		t.pool = append(t.pool, buf.Bytes())
	}
	return nil
}

// Legacy reports: the previous JSON reporter's fields, per agent type.
var legacyFields = map[string][]string{
	"connector": {"bytes_sent_total", "records_sent_total", "queries_processed", "errors_total",
		"uptime_seconds", "connected", "certificate_expiry_days"},
	"etl": {"flows_executed_total", "flows_success_total", "flows_failed_total",
		"tasks_executed_total", "last_flow_duration_seconds", "uptime_seconds", "connected"},
}

// legacyBody is one request of `points` report fields: one report object when
// they fit in one (7 fields at most), else a JSON list of reports.
func legacyBody(agent string, points int, generation int) ([]byte, error) {
	var reports []map[string]any
	for r := 0; points > 0; r++ {
		kind := []string{"connector", "etl"}[r%2]
		report := map[string]any{
			"agent_type": kind,
			"agent_id":   fmt.Sprintf("%s-%d", agent, r),
			"version":    "2.4.1",
		}
		fields := legacyFields[kind]
		for _, field := range fields[:min(points, len(fields))] {
			switch {
			case field == "connected":
				report[field] = true
			case strings.HasSuffix(field, "_seconds") || strings.HasSuffix(field, "_days"):
				report[field] = 3600.5 + float64(generation)
			default:
				report[field] = 1_000_000 + generation*1000 + r
			}
		}
		if kind == "etl" {
			report["last_flow_name"] = "nightly-sync"
		}
		points -= min(points, len(fields))
		reports = append(reports, report)
	}
	if len(reports) == 1 {
		return json.Marshal(reports[0])
	}
	return json.Marshal(reports)
}

func newLegacyTemplate(cred Credential, agent string, points int, generations int) (*Template, error) {
	t := &Template{Cred: cred, Agent: agent, Points: points}
	for g := 0; g < generations; g++ {
		body, err := legacyBody(agent, points, g)
		if err != nil {
			return nil, err
		}
		t.pool = append(t.pool, body)
	}
	return t, nil
}

// Body is a worker's own handle on a template: its private copy to patch, or
// the shared pool to cycle.
type Body struct {
	t   *Template
	own []byte
}

func newBody(t *Template) *Body {
	b := &Body{t: t}
	if t.pool == nil {
		b.own = append([]byte(nil), t.raw...)
	}
	return b
}

// Bytes is the body to send now.
func (b *Body) Bytes(now time.Time) []byte {
	if b.own != nil {
		b.t.patch(b.own, now)
		return b.own
	}
	return b.t.pool[(b.t.cursor.Add(1)-1)%uint64(len(b.t.pool))]
}
