package relay

import (
	"crypto/tls"
	"net"
	"sync"
)

// corkConn is the TCP connection under a TLS connection: while corked, the
// TLS records written go into a buffer, sent with one write when uncorked.
// tls.Conn writes each record (16 KiB at most) with its own system call;
// corking a large Write sends its records together.
type corkConn struct {
	net.Conn
	mu     sync.Mutex
	corked bool
	buf    []byte
}

func (c *corkConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.corked {
		c.buf = append(c.buf, b...)
		return len(b), nil
	}
	return c.Conn.Write(b)
}

func (c *corkConn) cork() {
	c.mu.Lock()
	c.corked = true
	c.mu.Unlock()
}

func (c *corkConn) uncork() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corked = false
	if len(c.buf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.buf)
	if cap(c.buf) > 1<<20 {
		c.buf = nil
	} else {
		c.buf = c.buf[:0]
	}
	return err
}

// corkedTLS is a TLS connection whose Writes of more than one record go
// out in one system call (see corkConn).
type corkedTLS struct {
	*tls.Conn
	raw *corkConn
	wmu sync.Mutex
}

// corkThreshold is the Write size from which corking pays: more than one
// TLS record.
const corkThreshold = 16 << 10

func (c *corkedTLS) Write(b []byte) (int, error) {
	if len(b) <= corkThreshold {
		return c.Conn.Write(b)
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.raw.cork()
	n, err := c.Conn.Write(b)
	if uerr := c.raw.uncork(); err == nil {
		err = uerr
	}
	return n, err
}

// ConnectionState is tls.Conn's: http2 looks for it.
func (c *corkedTLS) ConnectionState() tls.ConnectionState { return c.Conn.ConnectionState() }
