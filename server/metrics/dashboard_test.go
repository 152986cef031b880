package metrics

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestDashboard: every expression of the Grafana dashboard names metrics
// wedged exports, and groups by labels those metrics have.
func TestDashboard(t *testing.T) {
	b, err := os.ReadFile("dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Name  string `json:"name"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	// What is exported, with each metric's labels (instance and job are
	// Prometheus's own).
	mfs, err := collectorOnly(fakes()).Gather()
	if err != nil {
		t.Fatal(err)
	}
	labels := map[string][]string{}
	for _, mf := range mfs {
		ls := []string{"instance", "job"}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if !slices.Contains(ls, l.GetName()) {
					ls = append(ls, l.GetName())
				}
			}
		}
		labels[mf.GetName()] = ls
	}
	var exprs []string
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	for _, v := range d.Templating.List {
		if q, ok := v.Query.(map[string]any); ok {
			exprs = append(exprs, q["query"].(string))
		}
	}
	if len(exprs) < 20 {
		t.Fatalf("only %d expressions in the dashboard", len(exprs))
	}
	name := regexp.MustCompile(`\b[a-z_]+_[a-z_]+\b`)
	by := regexp.MustCompile(`\bby \(([^)]*)\)`)
	used := map[string]bool{}
	for _, e := range exprs {
		var named []string
		for _, n := range name.FindAllString(e, -1) {
			if n == "label_values" || strings.HasPrefix(n, "__") {
				continue
			}
			if _, ok := labels[n]; !ok {
				t.Errorf("%q: %s is not a metric wedged exports", e, n)
				continue
			}
			named = append(named, n)
			used[n] = true
		}
		if len(named) == 0 {
			t.Errorf("%q names no wedge metric", e)
		}
		for _, m := range by.FindAllStringSubmatch(e, -1) {
			for _, l := range strings.Split(m[1], ",") {
				l = strings.TrimSpace(l)
				if !slices.ContainsFunc(named, func(n string) bool { return slices.Contains(labels[n], l) }) {
					t.Errorf("%q: groups by %q, a label none of %v has", e, l, named)
				}
			}
		}
	}
	for n := range labels {
		if !used[n] {
			t.Logf("not on the dashboard: %s", n)
		}
	}
}
