package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wedge-edge/wedge/server/registry"
)

// TestUsageExport: `wedge usage` lists every registration with its usage
// over several pages of a real node's admin API, as CSV and as JSON.
func TestUsageExport(t *testing.T) {
	url, st := apiNode(t)
	ctx := context.Background()
	us := st.(registry.UsageStore)
	want := map[string][2]uint64{}
	var over string
	for i := range 5 {
		k, _ := wgtypes.GeneratePrivateKey()
		c := registry.Client{PublicKey: k.PublicKey()}
		if i == 3 {
			c.QuotaBytes = 100
		}
		c, err := st.Create(ctx, c)
		if err != nil {
			t.Fatal(err)
		}
		rx, tx := uint64(1000*i), uint64(7*i)
		if _, err := us.AddUsage(ctx, "n1", 1, []registry.Delta{{ID: c.ID, Rx: rx, Tx: tx}}); err != nil {
			t.Fatal(err)
		}
		want[c.ID] = [2]uint64{rx, tx}
		if i == 3 {
			over = c.ID
		}
	}
	tok, _ := adminToken("")
	e := &usageExport{base: url, token: tok, page: 2, hc: http.DefaultClient}

	var b bytes.Buffer
	if err := e.run(&b, "csv"); err != nil {
		t.Fatal(err)
	}
	recs, err := csv.NewReader(&b).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 6 || len(recs[0]) != len(usageHeader) || recs[0][0] != "id" {
		t.Fatalf("CSV: %d records, header %v", len(recs), recs[0])
	}
	for _, r := range recs[1:] {
		w, ok := want[r[0]]
		if !ok || r[7] != strconv.FormatUint(w[0], 10) || r[8] != strconv.FormatUint(w[1], 10) || (r[10] == "true") != (r[0] == over) {
			t.Errorf("CSV row %v; want rx %d tx %d", r, w[0], w[1])
		}
		if _, err := time.Parse(time.RFC3339, r[9]); err != nil {
			t.Errorf("since %q: %v", r[9], err)
		}
	}

	b.Reset()
	if err := e.run(&b, "json"); err != nil {
		t.Fatal(err)
	}
	var rows []usageRow
	if err := json.Unmarshal(b.Bytes(), &rows); err != nil {
		t.Fatalf("JSON: %v\n%s", err, b.String())
	}
	if len(rows) != 5 {
		t.Fatalf("JSON: %d rows", len(rows))
	}
	for _, r := range rows {
		if w := want[r.ID]; r.RxBytes != w[0] || r.TxBytes != w[1] || r.OverQuota != (r.ID == over) || r.Since.IsZero() {
			t.Errorf("JSON row %+v; want rx %d tx %d", r, w[0], w[1])
		}
	}

	// Without the admin token: the node's 401, with the hint.
	e.token = ""
	if err := e.run(&bytes.Buffer{}, "csv"); err == nil {
		t.Fatal("export without a token succeeded")
	}
	if err := usageCmd([]string{"--format", "xml"}); !errors.As(err, new(usageError)) {
		t.Fatalf("--format xml: %v, want a usage error", err)
	}
}

// FuzzParseRegList: any bytes a node (or whatever answers in its place)
// sends are read or refused, never a panic.
func FuzzParseRegList(f *testing.F) {
	f.Add([]byte(`{"registrations":[],"next":""}`))
	f.Add([]byte(`{"registrations":[{"id":"a","usage":{"rx_bytes":1,"tx_bytes":2,"since":"2026-12-02T10:00:00Z","over_quota":true}}],"next":"a"}`))
	f.Add([]byte(`{"registrations":null} {}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		l, err := parseRegList(raw)
		if err != nil {
			return
		}
		for _, r := range l.Registrations {
			rowOf(r)
		}
	})
}
