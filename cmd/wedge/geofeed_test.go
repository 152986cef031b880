package main

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const (
	testPlan    = "../../egress/testdata/plan.json"
	testGeofeed = "../../egress/testdata/geofeed.golden"
)

func TestGeofeedCommand(t *testing.T) {
	want, err := os.ReadFile(testGeofeed)
	if err != nil {
		t.Fatal(err)
	}
	var stdout bytes.Buffer
	if err := runGeofeed([]string{"--egress-plan", testPlan}, &stdout, io.Discard); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(stdout.Bytes(), want) {
		t.Errorf("stdout:\n%s\nwant:\n%s", stdout.Bytes(), want)
	}

	out := filepath.Join(t.TempDir(), "geofeed.csv")
	if err := os.WriteFile(out, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	stdout.Reset()
	if err := runGeofeed([]string{"--egress-plan", testPlan, "--out", out}, &stdout, io.Discard); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) || stdout.Len() != 0 {
		t.Errorf("--out wrote:\n%s\nand printed %q; want the golden geofeed and nothing", got, stdout.Bytes())
	}
	if st, err := os.Stat(out); err != nil || st.Mode().Perm() != 0o644 {
		t.Errorf("--out file mode: %v, %v; want 0644", st.Mode(), err)
	}
	if ents, _ := os.ReadDir(filepath.Dir(out)); len(ents) != 1 {
		t.Errorf("temporary files left beside the output: %v", ents)
	}
}

func TestGeofeedCommandErrors(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "plan.json")
	if err := os.WriteFile(bad, []byte(`{"ipv4": [], "extra": 1}`), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name  string
		args  []string
		usage bool
		want  string
	}{
		{"no plan", nil, true, "--egress-plan is required"},
		{"unknown flag", []string{"--plan", testPlan}, true, "flag provided but not defined"},
		{"extra argument", []string{"--egress-plan", testPlan, "x"}, true, "unexpected arguments"},
		{"missing file", []string{"--egress-plan", "/nonexistent/plan.json"}, false, "/nonexistent/plan.json"},
		{"bad plan", []string{"--egress-plan", bad}, false, "egress plan " + bad + `: json: unknown field "extra"`},
		{"bad out dir", []string{"--egress-plan", testPlan, "--out", "/nonexistent/dir/feed.csv"}, false, "/nonexistent/dir"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var stdout bytes.Buffer
			err := runGeofeed(tt.args, &stdout, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error containing %q", err, tt.want)
			}
			if got := errors.As(err, new(usageError)); got != tt.usage {
				t.Errorf("usage error: got %v, want %v (%v)", got, tt.usage, err)
			}
			if stdout.Len() != 0 {
				t.Errorf("printed %q on a failure", stdout.Bytes())
			}
		})
	}
	if err := runGeofeed([]string{"--help"}, io.Discard, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("--help: got %v, want flag.ErrHelp", err)
	}
}
