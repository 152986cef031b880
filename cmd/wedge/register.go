package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	"rsc.io/qr"

	"github.com/wedge-edge/wedge/server/clientconf"
)

func register(args []string) error {
	fs := flag.NewFlagSet("wedge register", flag.ContinueOnError)
	api := fs.String("api", "http://127.0.0.1:8080", "registration API base `URL`")
	out := fs.String("out", "", "write the wg-quick config to `FILE` (mode 0600; default: standard output)")
	family := fs.Int("family", 0, "endpoint family wg-quick uses: 4, 6, or 0 for the server's first")
	keepalive := fs.Int("keepalive", 25, "PersistentKeepalive `SECONDS` (0: off); keeps NAT mappings alive")
	reserved := fs.Bool("reserved", false, "also print `reserved = [b1, b2, b3]` for third-party clients")
	noQR := fs.Bool("no-qr", false, "do not show the config as a QR code on a terminal")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("register: unexpected arguments %q", fs.Args())
	}
	if *family != 0 && *family != 4 && *family != 6 {
		return fmt.Errorf("register: --family %d: want 4, 6 or 0", *family)
	}
	priv, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	reg, err := clientconf.Register(ctx, &http.Client{}, *api, priv.PublicKey())
	if err != nil {
		return err
	}
	var conf bytes.Buffer
	if err := clientconf.Write(&conf, priv, reg, clientconf.Options{Family: *family, API: *api, Keepalive: *keepalive}); err != nil {
		return err
	}
	if *out == "" {
		os.Stdout.Write(conf.Bytes())
	} else {
		if err := os.WriteFile(*out, conf.Bytes(), 0o600); err != nil {
			return fmt.Errorf("register: %w", err)
		}
		fmt.Fprintf(os.Stderr, "registered %s (ClientID %s); config written to %s\n", reg.ID, reg.ClientID, *out)
	}
	if *reserved {
		fmt.Printf("reserved = [%d, %d, %d]\n", reg.Reserved[0], reg.Reserved[1], reg.Reserved[2])
	}
	if !*noQR && *out != "" && isTerminal(os.Stdout) {
		if err := printQR(conf.String()); err != nil {
			fmt.Fprintln(os.Stderr, "wedge: no QR code:", err)
		}
	}
	return nil
}

func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// printQR draws the code with half blocks, two modules per character cell,
// dark on light with the 4-module quiet zone scanners need.
func printQR(text string) error {
	c, err := qr.Encode(text, qr.L)
	if err != nil {
		return err
	}
	const quiet = 4
	black := func(x, y int) bool {
		x, y = x-quiet, y-quiet
		return x >= 0 && y >= 0 && x < c.Size && y < c.Size && c.Black(x, y)
	}
	var b bytes.Buffer
	n := c.Size + 2*quiet
	for y := 0; y < n; y += 2 {
		for x := 0; x < n; x++ {
			top, bot := black(x, y), black(x, y+1)
			switch {
			case top && bot:
				b.WriteString(" ")
			case top:
				b.WriteString("▄")
			case bot:
				b.WriteString("▀")
			default:
				b.WriteString("█")
			}
		}
		b.WriteString("\n")
	}
	_, err = os.Stdout.Write(b.Bytes())
	return err
}
