package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/wedge-edge/wedge/e2e/lab"
)

func labCmd(args []string) error {
	if len(args) == 0 || args[0] != "bench" {
		return errors.New("lab: usage: wedge lab bench [--seconds N] [--rounds N] [--cps D]")
	}
	fs := flag.NewFlagSet("wedge lab bench", flag.ContinueOnError)
	seconds := fs.Int("seconds", 5, "length of each iperf3 run")
	rounds := fs.Int("rounds", 3, "measurements per side, interleaved; the median is reported")
	cps := fs.Duration("cps", 3*time.Second, "length of each connections-per-second run")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: wedge lab bench [flags]

Builds two single-node netns labs from this source tree (run it from the
repository, as root): one with wedged, one with the baseline (a plain
wireguard-go server with kernel forwarding and NAT). Each has a wg-quick
client. Measures iperf3 TCP throughput both ways and new TCP connections per
second through each, alternating between them, and prints medians and the
wedged/baseline ratios. Everything is removed afterwards.

`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("lab: needs root (it makes network namespaces)")
	}
	if err := lab.Check(append(lab.ToolsOrigin, lab.ToolsClient...)...); err != nil {
		return fmt.Errorf("lab: %w (sudo .ci/run installs everything)", err)
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

	res, err := lab.Bench(&cl, bins, lab.BenchOpts{
		Seconds: *seconds, Rounds: *rounds, CPS: *cps,
		Logf: func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) },
	})
	if err != nil {
		return err
	}
	fmt.Println()
	res.Print(os.Stdout)
	return nil
}
