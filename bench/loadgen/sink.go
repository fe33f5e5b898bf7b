package main

// A trivial OTLP endpoint answering every export at once: what the generator
// reaches when the server costs (almost) nothing.

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"

	"google.golang.org/grpc"
)

func serveSink(kind, listen string) error {
	lis, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "listening %s\n", lis.Addr())
	switch kind {
	case "grpc":
		server := grpc.NewServer(grpc.ForceServerCodecV2(rawCodec{}), grpc.MaxRecvMsgSize(64<<20))
		server.RegisterService(&grpc.ServiceDesc{
			ServiceName: "opentelemetry.proto.collector.metrics.v1.MetricsService",
			HandlerType: (*any)(nil),
			Methods: []grpc.MethodDesc{{
				MethodName: "Export",
				Handler: func(_ any, _ context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
					var body []byte
					if err := dec(&body); err != nil {
						return nil, err
					}
					empty := []byte{}
					return &empty, nil
				},
			}},
		}, struct{}{})
		return server.Serve(lis)
	case "http":
		return http.Serve(lis, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/x-protobuf")
			w.WriteHeader(http.StatusOK)
		}))
	}
	return fmt.Errorf("-sink must be grpc or http, not %q", kind)
}
