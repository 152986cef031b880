package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"syscall"

	"github.com/wedge-edge/wedge/egress"
)

// liveKeys are the settings a SIGHUP applies without a restart: the log's
// level. The files named by --egress-plan and --geoip are re-read too;
// --enroll-tokens is re-read on its own when it changes. Every other
// setting needs a restart, which a SIGHUP says.
var liveKeys = []string{"log-level"}

// reloader is what a SIGHUP acts on: the running configuration, the
// logger's level and the egress router (nil without --egress-plan).
type reloader struct {
	c      *config
	s      *settings
	router *egress.Router
}

// notifyHUP starts listening for SIGHUP, whose default action would end
// the process, and returns the channel; run calls it first so that a
// SIGHUP during the start is kept for later instead.
func notifyHUP() (<-chan os.Signal, func()) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	return hup, func() { signal.Stop(hup) }
}

// serveHUP reloads on every SIGHUP until ctx ends.
func (r *reloader) serveHUP(ctx context.Context, hup <-chan os.Signal) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			r.reload()
		}
	}
}

// reload re-reads the config file (with the command line, which still
// wins), applies what can change live, re-reads the egress plan and the
// GeoIP database, and logs what it reloaded and which changed settings
// need a restart. Sessions, flows and registrations are not touched.
func (r *reloader) reload() {
	log := r.s.log
	log.Info("SIGHUP: reloading", "config", r.c.configFile, "egress_plan", r.c.egressPlan, "geoip", r.c.geoip)
	reloaded, failed, restart := []string{}, []string{}, []string{} // [] rather than null in a JSON log
	if r.c.configFile != "" {
		nc, err := flags(r.c.args)
		if err != nil {
			log.Error("SIGHUP: config file not reloaded; the running settings stay", "config", r.c.configFile, "err", err)
			failed = append(failed, "config")
		} else {
			reloaded = append(reloaded, "config")
			for _, k := range changedKeys(r.c.values, nc.values) {
				if !slices.Contains(liveKeys, k) {
					restart = append(restart, k)
					continue
				}
				if err := r.apply(k, nc); err != nil {
					log.Error("SIGHUP: setting not applied", "key", k, "err", err)
					failed = append(failed, k)
					continue
				}
				r.c.values[k] = nc.values[k]
				reloaded = append(reloaded, k)
			}
		}
	}
	if r.router != nil {
		files, err := r.router.Reload()
		reloaded = append(reloaded, files...)
		if err != nil {
			failed = append(failed, "egress") // Reload logged which
		}
	}
	level := slog.LevelInfo
	if len(restart) > 0 || len(failed) > 0 {
		level = slog.LevelWarn
	}
	log.Log(context.Background(), level, "SIGHUP: reload done", "reloaded", reloaded, "failed", failed, "needs_restart", restart)
}

// apply makes live setting k take nc's value.
func (r *reloader) apply(k string, nc *config) error {
	switch k {
	case "log-level":
		var l slog.Level
		if err := l.UnmarshalText([]byte(nc.logLevel)); err != nil {
			return err
		}
		r.s.level.Set(l)
		r.c.logLevel = nc.logLevel
	}
	return nil
}

// changedKeys are the names whose values differ between old and cur,
// sorted.
func changedKeys(old, cur map[string]string) []string {
	var out []string
	for k, v := range cur {
		if old[k] != v {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}
