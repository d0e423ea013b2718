package testnet

import (
	"context"
	"log/slog"
	"strings"
	"sync"

	"github.com/libp2p/go-libp2p/gologshim"
)

// quietLibp2pLogs routes go-libp2p's logs, errors only, to the process's
// default slog handler, less the one error every testnet connection causes:
// libp2p's TCP transport cannot set keepalives on a connection from a custom
// dialer (it hides the connection behind a wrapper that has no such method),
// and keepalives mean nothing on loopback. Without this, a 500-node network
// prints one line per connection. It must run before any libp2p logger first
// logs, so New calls it.
var quietLibp2pLogs = sync.OnceFunc(func() {
	gologshim.SetDefaultHandler(keepaliveFilter{Handler: slog.Default().Handler()})
})

type keepaliveFilter struct {
	slog.Handler
	tcpTransport bool // the records are the TCP transport's
}

func (h keepaliveFilter) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelError && h.Handler.Enabled(ctx, l)
}

func (h keepaliveFilter) Handle(ctx context.Context, r slog.Record) error {
	if h.tcpTransport && strings.HasPrefix(r.Message, "can't set TCP keepalives") {
		return nil
	}
	return h.Handler.Handle(ctx, r)
}

func (h keepaliveFilter) WithAttrs(attrs []slog.Attr) slog.Handler {
	tcp := h.tcpTransport
	for _, a := range attrs {
		if a.Key == "logger" && a.Value.String() == "tcp-tpt" {
			tcp = true
		}
	}
	return keepaliveFilter{Handler: h.Handler.WithAttrs(attrs), tcpTransport: tcp}
}

func (h keepaliveFilter) WithGroup(name string) slog.Handler {
	return keepaliveFilter{Handler: h.Handler.WithGroup(name), tcpTransport: h.tcpTransport}
}
