package main

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestReload: a SIGHUP's reload applies a new log level from the config
// file at once, re-reads the egress plan, names the changed settings that
// need a restart, and keeps everything when the file no longer parses.
func TestReload(t *testing.T) {
	dir := t.TempDir()
	conf, plan := filepath.Join(dir, "wedged.conf"), filepath.Join(dir, "plan.json")
	if err := os.WriteFile(plan, []byte(testPlan), 0o644); err != nil {
		t.Fatal(err)
	}
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(conf, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("log-level = info\nlisten = 51820\negress-plan = " + plan + "\ndc = ams\n")
	c, err := flags([]string{"--config", conf, "--mtu", "1400"})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	lg, level, err := newLogger(&buf, "text", c.logLevel)
	if err != nil {
		t.Fatal(err)
	}
	router, err := openRouter(c, 1, lg)
	if err != nil {
		t.Fatal(err)
	}
	rl := &reloader{c: c, s: &settings{log: lg, level: level}, router: router}

	// The file changes the level and the port; the command line's --mtu
	// still wins over the file's.
	write("log-level = debug\nlisten = 51821\nmtu = 1300\negress-plan = " + plan + "\ndc = ams\n")
	buf.Reset()
	rl.reload()
	if level.Level() != slog.LevelDebug || !lg.Enabled(context.Background(), slog.LevelDebug) {
		t.Errorf("log level %v after the reload, want DEBUG", level.Level())
	}
	done := lastLine(buf.String(), "SIGHUP: reload done")
	for _, want := range []string{"level=WARN", `reloaded="[config log-level egress-plan]"`, "needs_restart=[listen]", "failed=[]"} {
		if !strings.Contains(done, want) {
			t.Errorf("reload done line %q lacks %q\nlog:\n%s", done, want, buf.String())
		}
	}
	if !strings.Contains(buf.String(), "egress plan reloaded") {
		t.Errorf("the egress plan was not reloaded:\n%s", buf.String())
	}

	// Again with nothing changed: the port still needs a restart (it was
	// not applied), the level is no news.
	buf.Reset()
	rl.reload()
	if done := lastLine(buf.String(), "SIGHUP: reload done"); !strings.Contains(done, `reloaded="[config egress-plan]"`) || !strings.Contains(done, "needs_restart=[listen]") {
		t.Errorf("second reload: %q", done)
	}

	// A broken file: nothing changes, the plan is still re-read.
	write("log-level = info\nno-such-flag = 1\n")
	buf.Reset()
	rl.reload()
	if level.Level() != slog.LevelDebug {
		t.Errorf("a broken config file changed the level to %v", level.Level())
	}
	if done := lastLine(buf.String(), "SIGHUP: reload done"); !strings.Contains(done, "failed=[config]") || !strings.Contains(done, "reloaded=[egress-plan]") {
		t.Errorf("reload of a broken config file: %q\n%s", done, buf.String())
	}
}

func lastLine(log, substr string) string {
	var last string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, substr) {
			last = l
		}
	}
	return last
}
