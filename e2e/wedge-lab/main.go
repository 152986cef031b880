// Command wedge-lab builds the network-namespace lab of e2e/lab from this
// source tree and measures through it: wedged against a plain wireguard-go
// baseline (bench), and the XDP front's forwarding hop against the direct
// path (bench-front). It needs root and is run from the repository:
//
//	go run ./e2e/wedge-lab bench --seconds 5 --rounds 3        # as root
//	go run ./e2e/wedge-lab bench-front --seconds 5 --rounds 7  # as root
//
// It is a command of its own, not a subcommand of wedge, so that the client
// binary does not link the lab and, through it, the server side.
//
// Like all of e2e/, it must not import server/, client/, netstack/ or egress/.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"syscall"
	"time"

	"github.com/wedge-edge/wedge/e2e/lab"
)

const usage = `Usage: wedge-lab <command> [flags]

Commands:
  bench        wedged against a plain wireguard-go baseline, one node
  bench-front  the XDP front's forwarding hop against the direct path, two nodes

Both need root and build the lab from this source tree (run from the
repository). Run "wedge-lab <command> --help" for a command's flags.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "bench":
		err = labBench(args)
	case "bench-front":
		err = labBenchFront(args)
	case "help", "-h", "--help":
		fmt.Print(usage)
		return
	default:
		fmt.Fprintf(os.Stderr, "wedge-lab: unknown command %q\n\n%s", cmd, usage)
		os.Exit(2)
	}
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "wedge-lab:", err)
		os.Exit(1)
	}
}

func labBench(args []string) error {
	fs := flag.NewFlagSet("wedge-lab bench", flag.ContinueOnError)
	seconds := fs.Int("seconds", 5, "length of each iperf3 run")
	rounds := fs.Int("rounds", 3, "measurements per side, interleaved; the median is reported")
	cps := fs.Duration("cps", 3*time.Second, "length of each connections-per-second run")
	streams := fs.Int("streams", 8, "streams of the parallel TCP run")
	udpSteps := fs.Int("udp-steps", 6, "iperf3 UDP runs the search for the highest rate with < 1% loss makes per direction")
	echo := fs.Duration("echo", 5*time.Second, "length of each latency run (512-byte TCP echo at 100/s)")
	idle := fs.Int("idle-flows", 500, "idle TCP connections held open for the memory measurement")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: wedge-lab bench [flags]

Builds two single-node netns labs from this source tree (run it from the
repository, as root): one with wedged, one with the baseline (a plain
wireguard-go server with kernel forwarding and NAT). Each has a wg-quick
client. Measures through each, alternating between them: iperf3 TCP
throughput both ways (one stream and --streams), the highest iperf3 UDP rate
with less than 1% loss both ways (a bisection), new TCP connections per
second with the CPU each costs, and the round trip of a 512-byte TCP echo at
100/s (p50, p99); then once each, the server's memory per idle TCP flow and
its growth during one download. Prints medians and the wedged/baseline
ratios. Everything is removed afterwards.

`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	return runLab(slices.Concat(lab.ToolsOrigin, lab.ToolsClient), func(cl *lab.Cleanups, bins lab.Bins) (func(io.Writer), error) {
		res, err := lab.Bench(cl, bins, lab.BenchOpts{
			Seconds: *seconds, Rounds: *rounds, CPS: *cps, Logf: stderrf,
			Streams: *streams, UDPSteps: *udpSteps, Echo: *echo, IdleFlows: *idle,
		})
		return res.Print, err
	})
}

func labBenchFront(args []string) error {
	fs := flag.NewFlagSet("wedge-lab bench-front", flag.ContinueOnError)
	seconds := fs.Int("seconds", 5, "length of each iperf3 run")
	rounds := fs.Int("rounds", 3, "measurements per path, interleaved; the median is reported")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: wedge-lab bench-front [flags]

Builds a netns cluster lab from this source tree (run it from the
repository, as root): two nodes running wedged with the XDP front on their
uplinks, one etcd member, and a stamped client (wedge connect, TUN mode,
inside the client namespace). Measures iperf3 TCP throughput both ways
through the client's tunnel with the VIP routed to the client's owner
(direct) and to the other node, which forwards every packet of the client to
the owner over GUE (forward), alternating between the two. Prints medians and
the forward/direct ratios; fails if the XDP counters show a phase did not
take its path. Everything is removed afterwards.

`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	return runLab(lab.ToolsBenchFront, func(cl *lab.Cleanups, bins lab.Bins) (func(io.Writer), error) {
		res, err := lab.BenchFront(cl, bins, lab.BenchOpts{
			Seconds: *seconds, Rounds: *rounds, Logf: stderrf,
		})
		return res.Print, err
	})
}

func stderrf(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }

// runLab checks for root and tools, builds wedged, wedge and originsrv from
// this source tree, runs bench with a Cleanups that is run on return and on
// Ctrl-C, and prints its result to stdout.
func runLab(tools []string, bench func(cl *lab.Cleanups, bins lab.Bins) (func(io.Writer), error)) error {
	if os.Geteuid() != 0 {
		return errors.New("lab: needs root (it makes network namespaces)")
	}
	if err := lab.Check(tools...); err != nil {
		return fmt.Errorf("lab: %w (bash .ci/run, as root, installs everything)", err)
	}
	dir, err := os.MkdirTemp("", "wedge-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	fmt.Fprintln(os.Stderr, "building wedged, wedge and originsrv...")
	bins, err := lab.Build(dir)
	if err != nil {
		return err
	}
	var cl lab.Cleanups
	defer cl.Run()
	// Clean up on Ctrl-C too.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() { <-sig; cl.Run(); os.Exit(130) }()

	show, err := bench(&cl, bins)
	if err != nil {
		return err
	}
	fmt.Println()
	show(os.Stdout)
	return nil
}
