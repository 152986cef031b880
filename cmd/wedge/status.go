package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/wedge-edge/wedge/internal/api"
)

func status(args []string) error {
	fs := flag.NewFlagSet("wedge status", flag.ContinueOnError)
	apiURL := fs.String("api", "http://127.0.0.1:8080", "node API base `URL`")
	asJSON := fs.Bool("json", false, "print the raw JSON report")
	tokenFile := adminTokenFlag(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	tok, err := adminToken(*tokenFile)
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	hc := &http.Client{Timeout: 10 * time.Second}
	req, err := http.NewRequest(http.MethodGet, strings.TrimSuffix(*apiURL, "/")+"/v1/status", nil)
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	setBearer(req, tok)
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return adminHint(fmt.Errorf("status: %s: %s", resp.Status, strings.TrimSpace(string(raw))))
	}
	if *asJSON {
		os.Stdout.Write(raw)
		return nil
	}
	var s api.Status
	if err := json.Unmarshal(raw, &s); err != nil {
		return fmt.Errorf("status: bad answer: %w", err)
	}
	printNodeStatus(os.Stdout, s)
	return nil
}

// printNodeStatus writes the human form of a node's report.
func printNodeStatus(w io.Writer, s api.Status) {
	fmt.Fprintf(w, "node %s  public key %s  port %d\n", s.Name, s.PublicKey, s.ListenPort)
	fmt.Fprintf(w, "endpoints: %s\n", strings.Join(s.Endpoints, ", "))
	fmt.Fprintf(w, "clients registered: %d, peers held with a session: %d, active (handshake < 3 min): %d\n", s.Clients, len(s.Peers), s.Active)
	fmt.Fprintf(w, "messages: %d stamped, %d unstamped; ClientID mismatches: %d\n\n", s.Bind.Stamped, s.Bind.Unstamped, s.Bind.Mismatches)
	if c := s.Cluster; c != nil {
		e := c.Etcd
		state := "connected"
		if !e.Connected {
			state = "UNREACHABLE (serving known clients, refusing registrations)"
		}
		fmt.Fprintf(w, "cluster: this node %s in %s (%s), underlay %s\n", c.Node.ID, c.Node.DC, c.Node.State, c.Node.Underlay)
		fmt.Fprintf(w, "etcd %s: %s since %s, revision %d", strings.Join(e.Endpoints, ","), state, ago(e.Since), e.Revision)
		if e.LastError != "" {
			fmt.Fprintf(w, "; last error %s: %s", ago(e.ErrorAt), e.LastError)
		}
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NODE\tDC\tSTATE\tUNDERLAY\tACTIVE CLIENTS\tUP")
		for _, m := range c.Nodes {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", m.ID, m.DC, m.State, m.Underlay, m.Clients, ago(m.Started))
		}
		tw.Flush()
		fmt.Fprintln(w)
	} else {
		fmt.Fprint(w, "cluster: none (single node, embedded store)\n\n")
	}
	if s.Paths != nil {
		printPaths(w, *s.Paths)
	}
	if len(s.Peers) > 0 {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tCLIENTID\tSEEN\tENDPOINT\tHANDSHAKE\tRX\tTX")
		for _, p := range s.Peers {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s ago\t%d\t%d\n", p.ID, p.ClientID, p.ClientIDSeen, p.Endpoint,
				time.Since(p.LastHandshake).Round(time.Second), p.RxBytes, p.TxBytes)
		}
		tw.Flush()
		fmt.Fprintln(w)
	}
	for name, sec := range s.Sections {
		b, _ := json.MarshalIndent(sec, "", "  ")
		fmt.Fprintf(w, "%s: %s\n", name, b)
	}
}

// printPaths writes the path table: the other data centers, then the
// routes (relayed first).
func printPaths(w io.Writer, p api.PathsStatus) {
	fmt.Fprintf(w, "path table of %s: %d prefixes known, %d relayed; %d measured here", p.DC, p.Known, p.Relayed, p.Measured)
	if p.Evicted > 0 {
		fmt.Fprintf(w, " (%d evicted)", p.Evicted)
	}
	fmt.Fprintln(w)
	figure := func(ms float64) string {
		switch {
		case ms == 0:
			return "-"
		case ms < 1:
			return fmt.Sprintf("%.3fms", ms)
		}
		return fmt.Sprintf("%.1fms", ms)
	}
	age := func(s float64) string { return (time.Duration(s * float64(time.Second))).Round(time.Second).String() }
	if len(p.DCs) > 0 {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "DC\tRTT\tAGE\tNODES\t")
		for _, d := range p.DCs {
			state := ""
			if d.Down {
				state = "relay down"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", d.DC, figure(d.RTTMs), age(d.AgeS), d.Nodes, state)
		}
		tw.Flush()
	}
	if len(p.Routes) > 0 {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "PREFIX\tEXIT\tVIA\tDIRECT\tAGE")
		for _, r := range p.Routes {
			exit, via := r.Exit, figure(r.ViaMs)
			if r.Node != "" {
				exit += " (" + r.Node + ")"
			}
			if r.Exit == "direct" && r.ViaDC != "" {
				via += " (" + r.ViaDC + ")"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Prefix, exit, via, figure(r.DirectMs), age(r.AgeS))
		}
		tw.Flush()
	}
	fmt.Fprintln(w)
}

// ago formats how long ago t was ("-" for never).
func ago(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return time.Since(t).Round(time.Second).String() + " ago"
}
