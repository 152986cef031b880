package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/wedge-edge/wedge/egress"
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
		err = writePublic(*out, feed.Bytes())
	}
	if err != nil {
		return fmt.Errorf("geofeed: %w", err)
	}
	return nil
}

// writePublic writes data to path with mode 0644 through a temporary file in
// the same directory and a rename, so that a web server publishing the
// file never serves half a geofeed.
func writePublic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".wedge-geofeed-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // after a successful rename, a no-op
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
