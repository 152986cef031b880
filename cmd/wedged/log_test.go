package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
)

// TestLogFormat: --log-format json writes one JSON object a line with the
// stable keys time, level, msg and the event's own; text (the default)
// writes key=value lines; the level can change after the start (SIGHUP).
func TestLogFormat(t *testing.T) {
	c, err := flags(nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.logFormat != "text" {
		t.Errorf("default --log-format %q, want text", c.logFormat)
	}
	if _, err := flags([]string{"--log-format", "json"}); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	lg, level, err := newLogger(&buf, "json", "info")
	if err != nil {
		t.Fatal(err)
	}
	lg.With("component", "egress").Warn("flow refused", "reason", "no_egress", "err", "two\nlines")
	lg.Debug("not shown at info")
	level.Set(slog.LevelDebug)
	lg.Debug("shown at debug")
	sc := bufio.NewScanner(&buf)
	var lines []map[string]any
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %q is not JSON: %v", sc.Text(), err)
		}
		lines = append(lines, m)
	}
	if len(lines) != 2 {
		t.Fatalf("%d lines, want 2 (a line per event, the debug one only after the level changed)", len(lines))
	}
	for _, k := range []string{"time", "level", "msg", "component", "reason", "err"} {
		if _, ok := lines[0][k]; !ok {
			t.Errorf("JSON line %v has no key %q", lines[0], k)
		}
	}
	if lines[0]["level"] != "WARN" || lines[0]["err"] != "two\nlines" || lines[1]["msg"] != "shown at debug" {
		t.Errorf("lines %v", lines)
	}

	buf.Reset()
	lg, _, err = newLogger(&buf, "text", "info")
	if err != nil {
		t.Fatal(err)
	}
	lg.Info("egress plan reloaded", "file", "/etc/wedge/plan.json")
	if got := buf.String(); !strings.Contains(got, `level=INFO msg="egress plan reloaded" file=/etc/wedge/plan.json`) || strings.Count(got, "\n") != 1 {
		t.Errorf("text line %q", got)
	}
	if _, _, err := newLogger(&buf, "xml", "info"); err == nil || !strings.Contains(err.Error(), "--log-format") {
		t.Errorf("--log-format xml: %v", err)
	}
	if _, _, err := newLogger(&buf, "json", "loud"); err == nil || !strings.Contains(err.Error(), "--log-level") {
		t.Errorf("--log-level loud: %v", err)
	}
}

// TestGRPCLogger: grpc's lines (etcd's client) reach the node's log as
// its own, JSON included; grpc's info lines are debug.
func TestGRPCLogger(t *testing.T) {
	var buf bytes.Buffer
	lg, _, err := newLogger(&buf, "json", "info")
	if err != nil {
		t.Fatal(err)
	}
	g := grpcLogger{lg.With("component", "grpc")}
	g.Infoln("subchannel", "connecting")
	g.Errorf("transport: %s", "connection refused")
	var m map[string]any
	if err := json.Unmarshal(buf.Bytes(), &m); err != nil {
		t.Fatalf("%q: want one JSON line: %v", buf.String(), err)
	}
	if m["level"] != "ERROR" || m["component"] != "grpc" || m["msg"] != "transport: connection refused" {
		t.Errorf("grpc's error line %v", m)
	}
	if g.V(2) || !g.V(0) {
		t.Error("grpc verbosity: want level 0 only")
	}
}
