// Command wedged runs one wedge node: a userspace WireGuard server whose
// tunnel ends in a gVisor netstack that terminates every inner flow and
// re-originates it from the node's egress addresses.
//
// It is wiring only: flags (flags.go), the store (node.go, cluster.go),
// the egress router and dialer (egress.go), the netstack, the device, the
// XDP front (server/front) and the API, started in that order by run and
// closed in the reverse order.
//
// It may import any product package; nothing imports it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/wedge-edge/wedge/server"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "genkey" {
		genkey(os.Args[2:])
		return
	}
	c, err := flags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "wedged:", err)
		os.Exit(2)
	}
	if err := run(c); err != nil {
		fmt.Fprintln(os.Stderr, "wedged:", err)
		os.Exit(1)
	}
}

// genkey is `wedged genkey FILE`.
func genkey(args []string) {
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "usage: wedged genkey FILE")
		os.Exit(2)
	}
	k, err := server.CreateKey(args[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, "wedged:", err)
		os.Exit(1)
	}
	fmt.Printf("wrote %s; service public key %s\ncopy the file (mode 0600) to every node and start each with --service-key %s\n",
		args[0], k.PublicKey(), args[0])
}

// run starts the node's parts in order, serves until a signal or a failure
// and closes them in the reverse order.
func run(c *config) error {
	s, err := c.check()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(c.state, 0o700); err != nil {
		return fmt.Errorf("--state: %w", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	key, err := serviceKey(c)
	if err != nil {
		return err
	}
	st, err := openStore(ctx, c, key, s)
	if err != nil {
		return err
	}
	defer st.close()
	eg, err := startEgress(ctx, c, s, st.member)
	if err != nil {
		return err
	}
	node, err := startNode(ctx, c, s, key, st, eg)
	if err != nil {
		return err
	}
	defer node.Close()
	if c.xdp != "" {
		x, err := startFront(c, s, key, st.member, node, eg.router)
		if err != nil {
			return err
		}
		defer x.Close()
	}
	if eg.router != nil {
		node.AddStats("egress_plan", func() any { return eg.router.Stats() })
	}
	if err := servePprof(c.pprof); err != nil {
		return err
	}
	return serve(ctx, c, s, node)
}

// servePprof serves Go's /debug/pprof on addr, if set.
func servePprof(addr string) error {
	if addr == "" {
		return nil
	}
	pl, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("--pprof: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	go http.Serve(pl, mux)
	return nil
}

// serve serves the node's API on --api until ctx ends (a signal), the
// device stops or the API fails, then shuts the API down.
func serve(ctx context.Context, c *config, s *settings, node *server.Node) error {
	ln, err := net.Listen("tcp", c.api)
	if err != nil {
		return fmt.Errorf("--api: %w", err)
	}
	srv := &http.Server{Handler: node.Handler(), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	s.log.Info("node up", "api", "http://"+c.api, "listen", c.listen, "endpoints", s.endpoints, "egress", c.egress, "egress_ports", c.egressPorts, "state", c.state)
	fmt.Fprintf(os.Stderr, `
wedge node %s is up. Register a client with:

    wedge register --api http://%s --out wedge.conf
    wg-quick up ./wedge.conf

`, c.name, c.api)

	var runErr error
	select {
	case <-ctx.Done():
		s.log.Info("shutting down")
	case <-node.Wait():
		runErr = errors.New("wireguard device stopped")
	case err := <-serveErr:
		runErr = fmt.Errorf("api: %w", err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	return runErr
}
