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
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"google.golang.org/grpc/grpclog"

	"github.com/wedge-edge/wedge/server"
	"github.com/wedge-edge/wedge/server/front"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "genkey" {
		genkey(os.Args[2:])
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "fingerprint" {
		fingerprint(os.Args[2:])
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
		if c.logFormat == "json" {
			// The last line of a JSON log is JSON too.
			slog.New(slog.NewJSONHandler(os.Stderr, nil)).Error("wedged: stopped", "err", err.Error())
		} else {
			fmt.Fprintln(os.Stderr, "wedged:", err)
		}
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
// and closes them in the reverse order. A SIGHUP reloads what it can
// (reload.go).
func run(c *config) error {
	hup, stopHUP := notifyHUP()
	defer stopHUP()
	s, err := c.check()
	if err != nil {
		return err
	}
	// Before any grpc connection (etcd's client) exists.
	grpclog.SetLoggerV2(grpcLogger{s.log.With("component", "grpc")})
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
	relayAt, relayPub, err := relayListen(c, st.member)
	if err != nil {
		return err
	}
	pt := startPaths(ctx, st, relayPub, s.log.With("component", "paths"))
	defer pt.stop()
	eg, err := startEgress(ctx, c, s, st.member, pt.observe())
	if err != nil {
		return err
	}
	pt.probe(eg, s.sources)
	var nodeID string
	if st.member != nil {
		nodeID = st.member.Self().ID
	}
	rl, err := startRelay(relayAt, key, nodeID, eg, pt.table, s.log.With("component", "relay"))
	if err != nil {
		return err
	}
	defer rl.close()
	node, stack, err := startNode(ctx, c, s, key, st, eg, pt.table, rl.dialer(eg, pt.table))
	if err != nil {
		return err
	}
	defer node.Close()
	var x *front.Front
	if c.xdp != "" {
		if x, err = startFront(c, s, key, st.member, node, eg.router); err != nil {
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
	if err := serveMetrics(c.metrics, metricsSources(node, stack, eg, st, x, rl)); err != nil {
		return err
	}
	hupr := &reloader{c: c, s: s, router: eg.router}
	go hupr.serveHUP(ctx, hup)
	return serve(ctx, c, s, node)
}
