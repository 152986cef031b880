package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/wedge-edge/wedge/egress"
	"github.com/wedge-edge/wedge/internal/atomicfile"
)

// usageError marks a mistake on the command line; main exits 2 for it, as
// for an unknown command, and 1 for every other error.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func geofeed(args []string) error {
	return runGeofeed(args, os.Stdout, os.Stderr)
}

// runGeofeed is the geofeed command with its output streams as parameters,
// for tests.
func runGeofeed(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("wedge geofeed", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: wedge geofeed --egress-plan FILE [--out FILE]

Writes the RFC 8805 geofeed of an egress plan: one line per prefix with the
country of the clients it serves, for geolocation providers to fetch.

`)
		fs.PrintDefaults()
	}
	plan := fs.String("egress-plan", "", "egress plan `FILE` (JSON), as given to wedged")
	out := fs.String("out", "", "write the geofeed to `FILE` (mode 0644, replaced atomically; default: standard output)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{fmt.Errorf("geofeed: %w", err)}
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return usageError{fmt.Errorf("geofeed: unexpected arguments %q", fs.Args())}
	}
	if *plan == "" {
		fs.Usage()
		return usageError{errors.New("geofeed: --egress-plan is required")}
	}
	p, err := egress.LoadPlan(*plan)
	if err != nil {
		return fmt.Errorf("geofeed: %w", err)
	}
	var feed bytes.Buffer
	if err := p.Geofeed(&feed); err != nil {
		return fmt.Errorf("geofeed: %w", err)
	}
	if *out == "" {
		_, err = stdout.Write(feed.Bytes())
	} else {
		err = atomicfile.WriteFile(*out, feed.Bytes(), 0o644)
	}
	if err != nil {
		return fmt.Errorf("geofeed: %w", err)
	}
	return nil
}
