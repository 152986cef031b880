// Command wedge is the wedge CLI: register a client, connect with it, read
// or drain a node, export usage, and write an egress plan's geofeed. The lab benchmarks
// are a command of their own, e2e/wedge-lab.
//
// It is the client binary: it must not import server/, lb/ or e2e/, and
// links no etcd, bbolt, grpc or cilium/ebpf (TestClientDeps, internal/layout).
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
)

const usage = `Usage: wedge <command> [flags]

Commands:
  register   make a key pair, register it with a node, write a wg-quick config
  connect    run a client from that config (TUN, or a SOCKS5 proxy with --socks)
  status     show a node's state (clients, sessions, counters, cluster)
  drain      mark a cluster node draining (or active again with --undo)
  usage      list every registration's usage, for billing (CSV or JSON)
  geofeed    write the RFC 8805 geofeed of an egress plan

Run "wedge <command> --help" for a command's flags.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "register":
		err = register(args)
	case "connect":
		err = connect(args)
	case "status":
		err = status(args)
	case "drain":
		err = drain(args)
	case "geofeed":
		err = geofeed(args)
	case "usage":
		err = usageCmd(args)
	case "help", "-h", "--help":
		fmt.Print(usage)
		return
	default:
		fmt.Fprintf(os.Stderr, "wedge: unknown command %q\n\n%s", cmd, usage)
		os.Exit(2)
	}
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "wedge:", err)
		if errors.As(err, new(usageError)) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}
