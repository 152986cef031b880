package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// serveHold answers /hold?ms=N after N milliseconds: a connection that
// stays open as long as the test needs.
func serveHold(w http.ResponseWriter, r *http.Request) {
	ms, err := strconv.Atoi(r.URL.Query().Get("ms"))
	if err != nil || ms < 0 || ms > 60000 {
		http.Error(w, "ms: want 0..60000", http.StatusBadRequest)
		return
	}
	select {
	case <-time.After(time.Duration(ms) * time.Millisecond):
	case <-r.Context().Done():
		return
	}
	io.WriteString(w, r.RemoteAddr+"\n")
}

// hold opens -n connections at once (one GET each, no keep-alive) to the
// URLs round-robin and reports how many answered: with /hold they are all
// open at the same time.
func hold(args []string) error {
	fs := flag.NewFlagSet("hold", flag.ExitOnError)
	n := fs.Int("n", 10, "connections at once")
	ms := fs.Int("ms", 2000, "how long the server holds each (added to each URL as ?ms=)")
	timeout := fs.Duration("timeout", 30*time.Second, "bound on the whole run")
	fs.Parse(args)
	urls := fs.Args()
	if len(urls) == 0 || *n < 1 {
		return errors.New("hold: want -n >= 1 and at least one URL")
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil, MaxConnsPerHost: 0}}
	var mu sync.Mutex
	var ok, failed int
	var firstErr string
	var slowest time.Duration
	remotes := map[string]int{}
	var wg sync.WaitGroup
	for i := range *n {
		u := urls[i%len(urls)]
		sep := "?"
		if strings.Contains(u, "?") {
			sep = "&"
		}
		u = fmt.Sprintf("%s%sms=%d", u, sep, *ms)
		wg.Go(func() {
			start := time.Now()
			body, err := getBody(ctx, c, u)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed++
				if firstErr == "" {
					firstErr = err.Error()
				}
				slowest = max(slowest, time.Since(start))
				return
			}
			ok++
			remotes[strings.TrimSpace(body)]++
		})
	}
	wg.Wait()
	res := map[string]any{"ok": ok, "failed": failed, "slowest_failure_ms": slowest.Milliseconds(), "remotes": len(remotes)}
	if firstErr != "" {
		res["first_error"] = firstErr
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

func getBody(ctx context.Context, c *http.Client, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", url, resp.Status)
	}
	return string(b), nil
}
