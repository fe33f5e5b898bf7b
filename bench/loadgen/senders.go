package main

// How one request is sent: OTLP/gRPC with a raw-bytes codec, or HTTP/1.1
// (OTLP/HTTP protobuf, legacy JSON) over keep-alive connections.

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
)

const exportMethod = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"

// rawCodec sends and receives message bytes as they are: bodies are serialized
// before the run, and responses are not parsed.
type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(*v.(*[]byte))}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*v.(*[]byte) = data.Materialize()
	return nil
}

func (rawCodec) Name() string { return "proto" }

// pregzipped is registered as gRPC's "gzip": bodies are compressed before the
// run, so sending one only sets the compressed flag and grpc-encoding: gzip.
// Responses compressed by the server are really decompressed.
type pregzipped struct{}

type passThrough struct{ io.Writer }

func (passThrough) Close() error { return nil }

func (pregzipped) Compress(w io.Writer) (io.WriteCloser, error) { return passThrough{w}, nil }
func (pregzipped) Decompress(r io.Reader) (io.Reader, error)    { return gzip.NewReader(r) }
func (pregzipped) Name() string                                 { return "gzip" }

func init() { encoding.RegisterCompressor(pregzipped{}) }

// Attempt is the outcome of one try.
type Attempt struct {
	Status     string
	Err        string
	Retryable  bool
	RetryAfter time.Duration // the server's delay; 0 when it named none
}

// Sender sends one body with a tenant's credential.
type Sender interface {
	Send(worker int, t *Template, body []byte) Attempt
	Close()
}

var codeNames = map[codes.Code]string{
	codes.OK: "OK", codes.Canceled: "CANCELLED", codes.Unknown: "UNKNOWN",
	codes.InvalidArgument: "INVALID_ARGUMENT", codes.DeadlineExceeded: "DEADLINE_EXCEEDED",
	codes.NotFound: "NOT_FOUND", codes.AlreadyExists: "ALREADY_EXISTS",
	codes.PermissionDenied: "PERMISSION_DENIED", codes.ResourceExhausted: "RESOURCE_EXHAUSTED",
	codes.FailedPrecondition: "FAILED_PRECONDITION", codes.Aborted: "ABORTED",
	codes.OutOfRange: "OUT_OF_RANGE", codes.Unimplemented: "UNIMPLEMENTED",
	codes.Internal: "INTERNAL", codes.Unavailable: "UNAVAILABLE", codes.DataLoss: "DATA_LOSS",
	codes.Unauthenticated: "UNAUTHENTICATED",
}

type grpcSender struct {
	conns   []*grpc.ClientConn
	ctxs    map[string]context.Context
	opts    []grpc.CallOption
	timeout time.Duration
	retry   bool
}

func newGRPCSender(addr string, conns int, creds []Credential, gz bool, timeout time.Duration, retry bool) (*grpcSender, error) {
	addr = strings.TrimPrefix(strings.TrimPrefix(addr, "http://"), "dns:///")
	s := &grpcSender{ctxs: map[string]context.Context{}, timeout: timeout, retry: retry}
	s.opts = []grpc.CallOption{grpc.ForceCodecV2(rawCodec{})}
	if gz {
		s.opts = append(s.opts, grpc.UseCompressor("gzip"))
	}
	for _, c := range creds {
		s.ctxs[c.Key] = metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+c.Key)
	}
	for i := 0; i < conns; i++ {
		// Each ClientConn is its own TCP connection (no sharing between them),
		// so servers sharing a port (SO_REUSEPORT) each get some.
		conn, err := grpc.NewClient("passthrough:///"+addr,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(64<<20)),
			grpc.WithSharedWriteBuffer(true),
		)
		if err != nil {
			return nil, err
		}
		conn.Connect()
		s.conns = append(s.conns, conn)
	}
	return s, nil
}

func (s *grpcSender) Send(worker int, t *Template, body []byte) Attempt {
	ctx, cancel := context.WithTimeout(s.ctxs[t.Cred.Key], s.timeout)
	defer cancel()
	var reply []byte
	var trailer metadata.MD
	opts := s.opts
	if s.retry {
		opts = append(opts[:len(opts):len(opts)], grpc.Trailer(&trailer))
	}
	err := s.conns[worker%len(s.conns)].Invoke(ctx, exportMethod, &body, &reply, opts...)
	code := status.Code(err)
	a := Attempt{Status: codeNames[code]}
	if a.Status == "" {
		a.Status = fmt.Sprintf("CODE_%d", code)
	}
	if err != nil {
		a.Err = err.Error()
	}
	switch code {
	case codes.Unavailable:
		a.Retryable = true
		a.RetryAfter = retryInfoDelay(trailer)
	case codes.ResourceExhausted:
		// As the OTel exporters: only when the server says when (RetryInfo).
		a.RetryAfter = retryInfoDelay(trailer)
		a.Retryable = a.RetryAfter > 0
	}
	return a
}

func (s *grpcSender) Close() {
	for _, c := range s.conns {
		c.Close()
	}
}

// retryInfoDelay reads google.rpc.RetryInfo{retry_delay: Duration} from the
// trailer the OTel Python exporter reads; 0 when absent or unreadable.
func retryInfoDelay(md metadata.MD) time.Duration {
	values := md.Get("google.rpc.retryinfo-bin")
	if len(values) == 0 {
		return 0
	}
	b := []byte(values[0])
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return 0
		}
		b = b[n:]
		if num == 1 && typ == protowire.BytesType {
			duration, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return 0
			}
			return parseDuration(duration)
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return 0
		}
		b = b[n:]
	}
	return 0
}

func parseDuration(b []byte) time.Duration {
	var seconds, nanos uint64
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 || typ != protowire.VarintType {
			return 0
		}
		b = b[n:]
		v, n := protowire.ConsumeVarint(b)
		if n < 0 {
			return 0
		}
		b = b[n:]
		switch num {
		case 1:
			seconds = v
		case 2:
			nanos = v
		}
	}
	return time.Duration(seconds)*time.Second + time.Duration(nanos)
}

type httpSender struct {
	client      *http.Client
	url         func(t *Template) string
	contentType string
	gzip        bool
}

func newHTTPSender(base string, target string, concurrency int, gz bool, timeout time.Duration) *httpSender {
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	base = strings.TrimRight(base, "/")
	transport := &http.Transport{
		MaxIdleConns:        concurrency + 16,
		MaxIdleConnsPerHost: concurrency + 16,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
	}
	s := &httpSender{client: &http.Client{Transport: transport, Timeout: timeout}, gzip: gz}
	if target == "legacy-json" {
		s.contentType = "application/json"
		s.url = func(t *Template) string { return base + "/api/metrics/agent/" + t.Cred.Tenant }
	} else {
		s.contentType = "application/x-protobuf"
		s.url = func(*Template) string { return base + "/v1/metrics" }
	}
	return s
}

func (s *httpSender) Send(worker int, t *Template, body []byte) Attempt {
	req, err := http.NewRequest(http.MethodPost, s.url(t), bytes.NewReader(body))
	if err != nil {
		return Attempt{Status: "error", Err: err.Error()}
	}
	req.Header.Set("Content-Type", s.contentType)
	req.Header.Set("Authorization", "Bearer "+t.Cred.Key)
	if s.gzip {
		req.Header.Set("Content-Encoding", "gzip")
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return Attempt{Status: "error", Err: err.Error(), Retryable: true}
	}
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	a := Attempt{Status: strconv.Itoa(resp.StatusCode)}
	if resp.StatusCode != http.StatusOK {
		a.Err = fmt.Sprintf("HTTP %d: %.200q", resp.StatusCode, answer)
	}
	switch resp.StatusCode {
	case 429, 502, 503, 504:
		a.Retryable = true
		if seconds, err := strconv.ParseFloat(resp.Header.Get("Retry-After"), 64); err == nil {
			a.RetryAfter = time.Duration(seconds * float64(time.Second))
		}
	}
	return a
}

func (s *httpSender) Close() { s.client.CloseIdleConnections() }

// sendWithRetry sends once, or with -retry as the OTel exporters do: retryable
// outcomes are tried again after the server's delay (else 1, 2, 4 s backoff
// with jitter) while the delay fits in the budget.
func sendWithRetry(s Sender, worker int, t *Template, body []byte, retry bool, budget time.Duration) (Attempt, int) {
	started := time.Now()
	a := s.Send(worker, t, body)
	retries := 0
	for backoff := time.Second; retry && a.Retryable; backoff *= 2 {
		delay := a.RetryAfter
		if delay <= 0 {
			delay = time.Duration(float64(backoff) * (0.8 + 0.4*rand.Float64()))
		}
		if time.Since(started)+delay > budget {
			break
		}
		time.Sleep(delay)
		retries++
		a = s.Send(worker, t, body)
	}
	return a, retries
}
