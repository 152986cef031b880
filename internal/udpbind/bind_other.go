//go:build !linux

package udpbind

import (
	"errors"
	"fmt"
	"net/netip"

	"golang.zx2c4.com/wireguard/conn"
)

// Supported reports whether this package's Bind works on this OS.
const Supported = false

// errUnsupported is returned by Open on this OS.
var errUnsupported = fmt.Errorf("udpbind: not supported on this OS: %w", errors.ErrUnsupported)

// Bind is a stub on this OS: Open fails. Use conn.NewDefaultBind instead.
type Bind struct{ opts options }

var _ conn.Bind = (*Bind)(nil)

// New returns a Bind whose Open fails on this OS.
func New(opts ...Option) *Bind {
	b := &Bind{opts: defaultOptions()}
	for _, o := range opts {
		o(&b.opts)
	}
	return b
}

func (b *Bind) Open(uint16) ([]conn.ReceiveFunc, uint16, error) { return nil, 0, errUnsupported }
func (b *Bind) Close() error                                    { return nil }
func (b *Bind) SetMark(uint32) error                            { return nil }
func (b *Bind) Send([][]byte, conn.Endpoint) error              { return errUnsupported }
func (b *Bind) BatchSize() int                                  { return conn.IdealBatchSize }
func (b *Bind) Stats() Stats                                    { return Stats{} }

// ParseEndpoint parses s as ip:port; v4-mapped addresses are unmapped.
func (b *Bind) ParseEndpoint(s string) (conn.Endpoint, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return nil, err
	}
	return &Endpoint{dst: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())}, nil
}
