package main

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/wedge-edge/wedge/internal/api"
)

// usageRow is one registration in the billing export.
type usageRow struct {
	ID         string    `json:"id"`
	ClientID   string    `json:"client_id"`
	PublicKey  string    `json:"public_key"`
	Pool       string    `json:"pool"`
	Country    string    `json:"country"`
	Plus       bool      `json:"plus"`
	QuotaBytes uint64    `json:"quota_bytes"`
	RxBytes    uint64    `json:"rx_bytes"`
	TxBytes    uint64    `json:"tx_bytes"`
	Since      time.Time `json:"since"`
	OverQuota  bool      `json:"over_quota"`
}

var usageHeader = []string{"id", "client_id", "public_key", "pool", "country", "plus", "quota_bytes", "rx_bytes", "tx_bytes", "since", "over_quota"}

func (r usageRow) csv() []string {
	return []string{r.ID, r.ClientID, r.PublicKey, r.Pool, r.Country, strconv.FormatBool(r.Plus),
		strconv.FormatUint(r.QuotaBytes, 10), strconv.FormatUint(r.RxBytes, 10), strconv.FormatUint(r.TxBytes, 10),
		r.Since.UTC().Format(time.RFC3339), strconv.FormatBool(r.OverQuota)}
}

func rowOf(r api.Registration) (usageRow, error) {
	if r.Usage == nil {
		return usageRow{}, fmt.Errorf("registration %s has no usage (a node that predates usage?)", api.Shown(r.ID))
	}
	row := usageRow{ID: r.ID, ClientID: r.ClientID, PublicKey: r.PublicKey, Plus: r.Plus, QuotaBytes: r.QuotaBytes,
		RxBytes: r.Usage.RxBytes, TxBytes: r.Usage.TxBytes, Since: r.Usage.Since, OverQuota: r.Usage.OverQuota}
	if r.Tags != nil {
		row.Pool, row.Country = r.Tags.Pool, r.Tags.Country
	}
	return row, nil
}

// usageCmd is `wedge usage`: every registration's usage from a node's
// admin API, for billing.
func usageCmd(args []string) error {
	fs := flag.NewFlagSet("wedge usage", flag.ContinueOnError)
	apiURL := fs.String("api", "http://127.0.0.1:8080", "node admin API base `URL`")
	format := fs.String("format", "csv", "output `format`: csv or json")
	page := fs.Int("page", 1000, "registrations asked for per request (1 to 1000)")
	tokenFile := adminTokenFlag(fs)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: wedge usage [--api URL] [--format csv|json]\n\n"+
			"Lists every registration's usage in its current period (bytes received from and sent to\n"+
			"the client, since when, its quota and whether it is over it) from a node's admin API.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("usage: unexpected argument %q", fs.Arg(0))}
	}
	if *format != "csv" && *format != "json" {
		return usageError{fmt.Errorf("usage: --format %q: want csv or json", *format)}
	}
	if *page < 1 || *page > 1000 {
		return usageError{fmt.Errorf("usage: --page %d: want 1 to 1000", *page)}
	}
	tok, err := adminToken(*tokenFile)
	if err != nil {
		return fmt.Errorf("usage: %w", err)
	}
	e := &usageExport{base: strings.TrimSuffix(*apiURL, "/"), token: tok, page: *page,
		hc: &http.Client{Timeout: 60 * time.Second}}
	if err := e.run(os.Stdout, *format); err != nil {
		return adminHint(fmt.Errorf("usage: %w", err))
	}
	return nil
}

type usageExport struct {
	base, token string
	page        int
	hc          *http.Client
}

// maxPageBytes bounds one page's answer: 1000 registrations are well
// under 1 MiB.
const maxPageBytes = 16 << 20

// run writes every registration's row to w, page by page.
func (e *usageExport) run(w io.Writer, format string) error {
	var cw *csv.Writer
	if format == "csv" {
		cw = csv.NewWriter(w)
		cw.Write(usageHeader)
	} else {
		io.WriteString(w, "[")
	}
	first, after := true, ""
	for {
		l, err := e.fetch(after)
		if err != nil {
			return err
		}
		for _, r := range l.Registrations {
			if r.ID <= after {
				return fmt.Errorf("bad answer: registration %s out of order after %s", api.Shown(r.ID), api.Shown(after))
			}
			row, err := rowOf(r)
			if err != nil {
				return err
			}
			if cw != nil {
				cw.Write(row.csv())
				continue
			}
			b, _ := json.Marshal(row)
			if !first {
				io.WriteString(w, ",")
			}
			first = false
			io.WriteString(w, "\n  ")
			w.Write(b)
		}
		if cw != nil {
			cw.Flush()
			if err := cw.Error(); err != nil {
				return err
			}
		}
		if l.Next == "" {
			break
		}
		// Each page must move on, so a broken answer cannot loop.
		if l.Next <= after || len(l.Registrations) == 0 || l.Next != l.Registrations[len(l.Registrations)-1].ID {
			return fmt.Errorf("bad answer: next page %s does not follow %s", api.Shown(l.Next), api.Shown(after))
		}
		after = l.Next
	}
	if cw == nil {
		_, err := io.WriteString(w, "\n]\n")
		return err
	}
	return nil
}

// fetch reads one page of GET /v1/reg.
func (e *usageExport) fetch(after string) (api.RegList, error) {
	q := url.Values{"limit": {strconv.Itoa(e.page)}}
	if after != "" {
		q.Set("after", after)
	}
	req, err := http.NewRequest(http.MethodGet, e.base+"/v1/reg?"+q.Encode(), nil)
	if err != nil {
		return api.RegList{}, err
	}
	setBearer(req, e.token)
	resp, err := e.hc.Do(req)
	if err != nil {
		return api.RegList{}, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxPageBytes+1))
	if err != nil {
		return api.RegList{}, err
	}
	if resp.StatusCode != http.StatusOK {
		var apiErr api.Error
		msg := strings.TrimSpace(string(raw))
		if json.Unmarshal(raw, &apiErr) == nil && apiErr.Error != "" {
			msg = apiErr.Error
		}
		return api.RegList{}, fmt.Errorf("%s: %s", resp.Status, api.Shown(msg))
	}
	return parseRegList(raw)
}

// parseRegList reads a page of the admin API's list (bytes from the
// network: bounded, one JSON object, nothing after it).
func parseRegList(raw []byte) (api.RegList, error) {
	if len(raw) > maxPageBytes {
		return api.RegList{}, fmt.Errorf("bad answer: a page larger than %d bytes", maxPageBytes)
	}
	var l api.RegList
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&l); err != nil {
		return api.RegList{}, fmt.Errorf("bad answer: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return api.RegList{}, errors.New("bad answer: data after the page")
	}
	return l, nil
}
