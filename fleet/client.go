package fleet

import (
	"log/slog"

	"github.com/patchctl/patchctl/p2p"
)

// Client speaks the client side of the fleet protocols over a p2p.Client.
type Client struct {
	c *p2p.Client
}

// NewClient returns a client of the fleet protocols that calls through c.
func NewClient(c *p2p.Client) *Client { return &Client{c: c} }

func orDiscard(log *slog.Logger) *slog.Logger {
	if log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return log
}
