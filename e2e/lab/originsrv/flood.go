package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wedge-edge/wedge/server/wgmsg"
)

// ---- wgflood ----

// wgflood sends WireGuard handshake initiations from every address of a
// prefix (which must be local: `ip route add local PREFIX dev lo`) to a
// server, in bursts, and counts what comes back. The initiations carry a
// valid MAC1 for the server's public key, which anyone can compute, so the
// server cannot drop them before its handshake queue; their static keys
// are random, so none is from a known peer. Under load the server should
// answer with cookie replies.
func wgflood(args []string) error {
	fs := flag.NewFlagSet("wgflood", flag.ExitOnError)
	to := fs.String("to", "", "server ADDR:PORT")
	key := fs.String("key", "", "server public key (base64)")
	from := fs.String("from", "", "source PREFIX, every address local")
	burst := fs.Int("burst", 256, "initiations per burst")
	every := fs.Duration("every", 25*time.Millisecond, "time between bursts")
	d := fs.Duration("d", 5*time.Second, "how long to flood")
	fs.Parse(args)
	dst, err := netip.ParseAddrPort(*to)
	if err != nil {
		return fmt.Errorf("wgflood: -to: %w", err)
	}
	pub, err := base64.StdEncoding.DecodeString(*key)
	if err != nil || len(pub) != 32 {
		return fmt.Errorf("wgflood: -key: want a base64 public key")
	}
	pfx, err := netip.ParsePrefix(*from)
	if err != nil || !pfx.Addr().Is4() || pfx.Bits() < 20 {
		return errors.New("wgflood: -from: want an IPv4 prefix of at most 4096 addresses")
	}
	mac1 := wgmsg.MAC1Key([32]byte(pub))

	var conns []*net.UDPConn
	for a := pfx.Masked().Addr(); pfx.Contains(a); a = a.Next() {
		c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, 0)))
		if err != nil {
			return fmt.Errorf("wgflood: bind %v (is the prefix routed locally?): %w", a, err)
		}
		defer c.Close()
		conns = append(conns, c)
	}

	var sent, cookies, responses, other atomic.Int64
	ctx, cancel := context.WithTimeout(context.Background(), *d)
	defer cancel()
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() {
			buf := make([]byte, 2048)
			for {
				n, err := c.Read(buf)
				if err != nil {
					return
				}
				switch wgmsg.Classify(buf[:n]) {
				case wgmsg.CookieReply:
					cookies.Add(1)
				case wgmsg.Response:
					responses.Add(1)
				default:
					other.Add(1)
				}
			}
		})
	}
	// The messages are made once: the generator shares the machine with
	// what it measures, so it should cost as little as it can. wireguard-go
	// does not remember initiations it could not open, so repeats cost it
	// as much as new ones.
	msgs := make([][]byte, 4096)
	for i := range msgs {
		msg := make([]byte, wgmsg.InitiationSize)
		rand.Read(msg)
		msg[0], msg[1], msg[2], msg[3] = 1, 0, 0, 0
		clear(msg[wgmsg.OffsetInitiationMAC2:])
		wgmsg.SetMAC1(&mac1, msg)
		msgs[i] = msg
	}
	var sendErr error
	t := time.NewTicker(*every)
	next := 0
loop:
	for {
		for range *burst {
			msg := msgs[next%len(msgs)]
			c := conns[next%len(conns)]
			next++
			if _, err := c.WriteToUDPAddrPort(msg, dst); err != nil && sendErr == nil {
				sendErr = err
			} else if err == nil {
				sent.Add(1)
			}
		}
		select {
		case <-ctx.Done():
			break loop
		case <-t.C:
		}
	}
	// Replies to the last bursts.
	time.Sleep(500 * time.Millisecond)
	for _, c := range conns {
		c.Close()
	}
	wg.Wait()
	res := map[string]any{"sources": len(conns), "sent": sent.Load(), "cookie_replies": cookies.Load(),
		"responses": responses.Load(), "other": other.Load()}
	if sendErr != nil {
		res["first_error"] = sendErr.Error()
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}
