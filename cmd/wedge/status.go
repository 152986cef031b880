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

	"github.com/wedge-edge/wedge/server"
)

func status(args []string) error {
	fs := flag.NewFlagSet("wedge status", flag.ContinueOnError)
	api := fs.String("api", "http://127.0.0.1:8080", "node API base `URL`")
	asJSON := fs.Bool("json", false, "print the raw JSON report")
	if err := fs.Parse(args); err != nil {
		return err
	}
	hc := &http.Client{Timeout: 10 * time.Second}
	resp, err := hc.Get(strings.TrimSuffix(*api, "/") + "/v1/status")
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status: %s: %s", resp.Status, strings.TrimSpace(string(raw)))
	}
	if *asJSON {
		os.Stdout.Write(raw)
		return nil
	}
	var s server.Status
	if err := json.Unmarshal(raw, &s); err != nil {
		return fmt.Errorf("status: bad answer: %w", err)
	}
	fmt.Printf("node %s  public key %s  port %d\n", s.Name, s.PublicKey, s.ListenPort)
	fmt.Printf("endpoints: %s\n", strings.Join(s.Endpoints, ", "))
	fmt.Printf("clients registered: %d, with a session: %d\n", s.Clients, len(s.Peers))
	fmt.Printf("messages: %d stamped, %d unstamped; ClientID mismatches: %d\n\n", s.Bind.Stamped, s.Bind.Unstamped, s.Bind.Mismatches)
	if len(s.Peers) > 0 {
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tCLIENTID\tSEEN\tENDPOINT\tHANDSHAKE\tRX\tTX")
		for _, p := range s.Peers {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s ago\t%d\t%d\n", p.ID, p.ClientID, p.ClientIDSeen, p.Endpoint,
				time.Since(p.LastHandshake).Round(time.Second), p.RxBytes, p.TxBytes)
		}
		tw.Flush()
		fmt.Println()
	}
	for name, sec := range s.Sections {
		b, _ := json.MarshalIndent(sec, "", "  ")
		fmt.Printf("%s: %s\n", name, b)
	}
	return nil
}
