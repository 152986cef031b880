// Command originsrv is the wedge lab's origin server and its client-side
// probe, one binary run inside lab namespaces (e2e/lab builds it).
//
//	originsrv serve [-http :80] [-dns :53] [-echo :7] [-name N] [-a IP,...] [-aaaa IP,...]
//	    HTTP: /ip answers the remote "ip:port" it saw, /bytes?n=N answers N
//	    bytes of Pattern. DNS (UDP and TCP): A/AAAA for -name; for
//	    whoami.wedge.test. the querier's address (A or AAAA by its family)
//	    and TXT "ip:port". Everything else NXDOMAIN.
//	    -echo: a TCP echo server.
//	originsrv echo -to ADDR:PORT [-proxy socks5://H:P] [-size 512] [-every 20ms] [-d 10s]
//	    an interactive session: a numbered message every interval, echoes
//	    read back in order; prints {"sent","echoed","max_gap_ms",
//	    "gap_at_ms","broken","err"} (see echo.go).
//	originsrv get [-check N] URL
//	    prints the body; with -check, reads it and prints
//	    {"n","sha256","ok"} where ok means "N bytes of Pattern".
//	originsrv dns [-server IP:PORT] -name N [-type A|AAAA] [-tcp]
//	    prints the answers, one per line; without -server, asks the first
//	    nameserver of /etc/resolv.conf (inside a lab namespace, its own).
//	originsrv cps -url URL [-d 5s] [-c 8]
//	    opens, uses (one GET) and closes connections for d, c at a time,
//	    and prints {"ok","errors","seconds","rate","first_error"}.
//	    HTTP also: /hold?ms=N waits N ms (at most 60 s), then answers the
//	    remote "ip:port" it saw, as /ip does.
//	originsrv hold -n N -ms MS [-timeout D] URL...
//	    opens N connections at once, round-robin over the URLs (each a
//	    /hold URL), and prints {"ok","failed","first_error",
//	    "slowest_failure_ms","remotes"}: how many answered, how many failed
//	    and how long the slowest failure took to come back.
//	originsrv hostile [-zerowin URL -flows N] [-blackhole ADDR:PORT -pending N] [-d D]
//	    a client that takes all it may: N connections that never read a
//	    large body (zero window), N dials to a destination that never
//	    answers; prints its counts every second (see hostile.go).
//	originsrv wgflood -to ADDR:PORT -key PUB -from PREFIX [-burst 256] [-every 25ms] [-d 5s]
//	    sends WireGuard initiations with a valid MAC1 and random keys from
//	    every (local) address of PREFIX, in bursts, and prints
//	    {"sources","sent","cookie_replies","responses","other"}.
//
// Like all of e2e/, it must not import server/, client/, netstack/ or
// egress/, except server/wgmsg, whose handshake code wgflood needs.
package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// Pattern is byte i of every /bytes body: i mod 251 (a prime, so the
// pattern does not line up with any power-of-two buffer or segment size).
func Pattern(i int64) byte { return byte(i % 251) }

const whoamiName = "whoami.wedge.test."

func main() {
	log.SetFlags(log.Ltime | log.Lmicroseconds)
	log.SetPrefix("originsrv: ")
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: originsrv serve|get|dns|cps|wgflood|hold|hostile|echo|delay [flags]")
		os.Exit(2)
	}
	var err error
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "serve":
		err = serve(args)
	case "get":
		err = get(args)
	case "dns":
		err = dnsQuery(args)
	case "cps":
		err = cps(args)
	case "wgflood":
		err = wgflood(args)
	case "hold":
		err = hold(args)
	case "hostile":
		err = hostile(args)
	case "echo":
		err = echoSession(args)
	case "delay":
		err = delayHop(args)
	default:
		err = fmt.Errorf("unknown command %q", cmd)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "originsrv:", err)
		os.Exit(1)
	}
}

// addrList is a repeatable, comma-separated address flag.
type addrList []netip.Addr

func (l *addrList) String() string { return fmt.Sprint(*l) }
func (l *addrList) Set(s string) error {
	for f := range strings.SplitSeq(s, ",") {
		a, err := netip.ParseAddr(strings.TrimSpace(f))
		if err != nil {
			return err
		}
		*l = append(*l, a)
	}
	return nil
}

// ---- serve ----

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	httpAddr := fs.String("http", ":80", "HTTP listen address (empty: none)")
	dnsAddr := fs.String("dns", ":53", "DNS listen addresses, comma-separated, UDP and TCP (empty: none)")
	echoAddr := fs.String("echo", "", "TCP echo listen address (empty: none)")
	name := fs.String("name", "origin.wedge.test.", "name answered with -a/-aaaa")
	var a4, a6 addrList
	fs.Var(&a4, "a", "A answers for -name (comma-separated, repeatable)")
	fs.Var(&a6, "aaaa", "AAAA answers for -name (comma-separated, repeatable)")
	fs.Parse(args)

	z := &zone{name: dnsName(*name), a: a4, aaaa: a6}
	// Several addresses: a UDP socket on a wildcard address answers from
	// the interface's primary address, not from the one a query was sent
	// to, and a resolver drops such answers; so each address the lab
	// queries gets a socket bound to it.
	var dnsAddrs []string
	if *dnsAddr != "" {
		dnsAddrs = strings.Split(*dnsAddr, ",")
	}
	errc := make(chan error, 2+2*len(dnsAddrs))
	for _, addr := range dnsAddrs {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return err
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return err
		}
		go func() { errc <- z.serveUDP(pc) }()
		go func() { errc <- z.serveTCP(ln) }()
	}
	if *echoAddr != "" {
		ln, err := net.Listen("tcp", *echoAddr)
		if err != nil {
			return err
		}
		go func() { errc <- serveEcho(ln) }()
	}
	if *httpAddr != "" {
		ln, err := net.Listen("tcp", *httpAddr)
		if err != nil {
			return err
		}
		mux := http.NewServeMux()
		mux.HandleFunc("/ip", func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, r.RemoteAddr+"\n")
		})
		mux.HandleFunc("/bytes", serveBytes)
		mux.HandleFunc("/hold", serveHold)
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() { errc <- srv.Serve(ln) }()
	}
	log.Printf("ready: http %q dns %q name %s A %v AAAA %v", *httpAddr, *dnsAddr, *name, a4, a6)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case s := <-sig:
		log.Printf("%v: exiting", s)
		return nil
	case err := <-errc:
		return err
	}
}

// patternBlock is a whole number of pattern periods, so it can be written
// repeatedly.
var patternBlock = func() []byte {
	b := make([]byte, 251*256)
	for i := range b {
		b[i] = Pattern(int64(i))
	}
	return b
}()

func serveBytes(w http.ResponseWriter, r *http.Request) {
	n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
	if err != nil || n < 0 {
		http.Error(w, "bad n", http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
	for n > 0 {
		chunk := patternBlock[:min(int64(len(patternBlock)), n)]
		if _, err := w.Write(chunk); err != nil {
			return
		}
		n -= int64(len(chunk))
	}
}

type zone struct {
	name    dnsmessage.Name
	a, aaaa []netip.Addr
}

func dnsName(s string) dnsmessage.Name {
	if !strings.HasSuffix(s, ".") {
		s += "."
	}
	return dnsmessage.MustNewName(s)
}

func (z *zone) serveUDP(pc net.PacketConn) error {
	buf := make([]byte, 65535)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return err
		}
		src, _ := netip.ParseAddrPort(from.String())
		resp, err := z.answer(buf[:n], src, 512)
		if err != nil {
			log.Printf("dns udp %v: %v", from, err)
			continue
		}
		pc.WriteTo(resp, from)
	}
}

func (z *zone) serveTCP(ln net.Listener) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			src, _ := netip.ParseAddrPort(c.RemoteAddr().String())
			r := bufio.NewReader(c)
			for {
				c.SetDeadline(time.Now().Add(10 * time.Second))
				var l uint16
				if err := binary.Read(r, binary.BigEndian, &l); err != nil {
					return
				}
				msg := make([]byte, l)
				if _, err := io.ReadFull(r, msg); err != nil {
					return
				}
				resp, err := z.answer(msg, src, 65535)
				if err != nil {
					log.Printf("dns tcp %v: %v", src, err)
					return
				}
				out := binary.BigEndian.AppendUint16(nil, uint16(len(resp)))
				if _, err := c.Write(append(out, resp...)); err != nil {
					return
				}
			}
		}()
	}
}

// answer builds the response to one query from src.
func (z *zone) answer(msg []byte, src netip.AddrPort, limit int) ([]byte, error) {
	var p dnsmessage.Parser
	h, err := p.Start(msg)
	if err != nil {
		return nil, err
	}
	q, err := p.Question()
	if err != nil {
		return nil, err
	}
	rh := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired}
	type rr struct {
		a    *dnsmessage.AResource
		aaaa *dnsmessage.AAAAResource
		txt  *dnsmessage.TXTResource
	}
	var answers []rr
	qn := strings.ToLower(q.Name.String())
	switch {
	case qn == strings.ToLower(z.name.String()):
		if q.Type == dnsmessage.TypeA || q.Type == dnsmessage.TypeALL {
			for _, a := range z.a {
				answers = append(answers, rr{a: &dnsmessage.AResource{A: a.As4()}})
			}
		}
		if q.Type == dnsmessage.TypeAAAA || q.Type == dnsmessage.TypeALL {
			for _, a := range z.aaaa {
				answers = append(answers, rr{aaaa: &dnsmessage.AAAAResource{AAAA: a.As16()}})
			}
		}
	case qn == whoamiName:
		a := src.Addr().Unmap()
		switch {
		case q.Type == dnsmessage.TypeA && a.Is4():
			answers = append(answers, rr{a: &dnsmessage.AResource{A: a.As4()}})
		case q.Type == dnsmessage.TypeAAAA && a.Is6():
			answers = append(answers, rr{aaaa: &dnsmessage.AAAAResource{AAAA: a.As16()}})
		case q.Type == dnsmessage.TypeTXT:
			answers = append(answers, rr{txt: &dnsmessage.TXTResource{TXT: []string{src.String()}}})
		}
	default:
		rh.RCode = dnsmessage.RCodeNameError
	}

	b := dnsmessage.NewBuilder(make([]byte, 0, 512), rh)
	b.EnableCompression()
	if err := b.StartQuestions(); err != nil {
		return nil, err
	}
	if err := b.Question(q); err != nil {
		return nil, err
	}
	if err := b.StartAnswers(); err != nil {
		return nil, err
	}
	for _, a := range answers {
		hdr := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 60}
		switch {
		case a.a != nil:
			err = b.AResource(hdr, *a.a)
		case a.aaaa != nil:
			err = b.AAAAResource(hdr, *a.aaaa)
		case a.txt != nil:
			err = b.TXTResource(hdr, *a.txt)
		}
		if err != nil {
			return nil, err
		}
	}
	out, err := b.Finish()
	if err != nil {
		return nil, err
	}
	if len(out) > limit {
		return nil, fmt.Errorf("response of %d bytes over %d", len(out), limit)
	}
	return out, nil
}

// ---- get ----

func get(args []string) error {
	fs := flag.NewFlagSet("get", flag.ExitOnError)
	check := fs.Int64("check", -1, "read the body and check it is this many bytes of Pattern; print JSON")
	timeout := fs.Duration("timeout", 60*time.Second, "overall timeout")
	proxy := fs.String("proxy", "", "proxy URL, e.g. socks5://127.0.0.1:1080")
	fs.Parse(args)
	if fs.NArg() != 1 {
		return errors.New("get: want one URL")
	}
	tr := &http.Transport{DisableKeepAlives: true, Proxy: nil}
	if *proxy != "" {
		u, err := url.Parse(*proxy)
		if err != nil {
			return fmt.Errorf("get: -proxy: %w", err)
		}
		tr.Proxy = http.ProxyURL(u)
	}
	c := &http.Client{Timeout: *timeout, Transport: tr}
	resp, err := c.Get(fs.Arg(0))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("%s: %s: %s", fs.Arg(0), resp.Status, b)
	}
	if *check < 0 {
		_, err := io.Copy(os.Stdout, resp.Body)
		return err
	}
	h := sha256.New()
	var n int64
	ok := true
	buf := make([]byte, 64<<10)
	// maxGap is the longest wait for the next bytes once the body began:
	// a stall a network change caused shows here even when the download
	// completes.
	var maxGap time.Duration
	last := time.Now()
	for {
		m, err := resp.Body.Read(buf)
		if now := time.Now(); m > 0 {
			if n > 0 {
				maxGap = max(maxGap, now.Sub(last))
			}
			last = now
		}
		for i, c := range buf[:m] {
			if ok && c != Pattern(n+int64(i)) {
				ok = false
			}
		}
		h.Write(buf[:m])
		n += int64(m)
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("after %d bytes: %w", n, err)
		}
	}
	return json.NewEncoder(os.Stdout).Encode(map[string]any{
		"n": n, "sha256": hex.EncodeToString(h.Sum(nil)), "ok": ok && n == *check,
		"max_gap_ms": maxGap.Milliseconds(),
	})
}

// ---- dns ----

func dnsQuery(args []string) error {
	fs := flag.NewFlagSet("dns", flag.ExitOnError)
	server := fs.String("server", "", "server ip:port (default: first nameserver of /etc/resolv.conf)")
	name := fs.String("name", "origin.wedge.test.", "name to ask for")
	qtype := fs.String("type", "A", "A, AAAA or TXT")
	useTCP := fs.Bool("tcp", false, "ask over TCP")
	timeout := fs.Duration("timeout", 2*time.Second, "per-try timeout")
	fs.Parse(args)

	if *server == "" {
		s, err := resolvConfServer("/etc/resolv.conf")
		if err != nil {
			return err
		}
		*server = s
	}
	types := map[string]dnsmessage.Type{"A": dnsmessage.TypeA, "AAAA": dnsmessage.TypeAAAA, "TXT": dnsmessage.TypeTXT}
	t, ok := types[strings.ToUpper(*qtype)]
	if !ok {
		return fmt.Errorf("dns: unknown type %q", *qtype)
	}
	id := uint16(time.Now().UnixNano())
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: id, RecursionDesired: true})
	b.StartQuestions()
	b.Question(dnsmessage.Question{Name: dnsName(*name), Type: t, Class: dnsmessage.ClassINET})
	q, err := b.Finish()
	if err != nil {
		return err
	}

	var resp []byte
	for try := 0; ; try++ {
		resp, err = exchange(*server, q, *useTCP, *timeout)
		if err == nil || *useTCP || try == 2 {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("dns %s: %w", *server, err)
	}
	var p dnsmessage.Parser
	h, err := p.Start(resp)
	if err != nil {
		return err
	}
	if h.ID != id {
		return fmt.Errorf("dns: answer id %d, want %d", h.ID, id)
	}
	if h.RCode != dnsmessage.RCodeSuccess {
		return fmt.Errorf("dns: %s %s: %v", *name, *qtype, h.RCode)
	}
	p.SkipAllQuestions()
	for {
		rh, err := p.AnswerHeader()
		if errors.Is(err, dnsmessage.ErrSectionDone) {
			return nil
		}
		if err != nil {
			return err
		}
		switch rh.Type {
		case dnsmessage.TypeA:
			r, err := p.AResource()
			if err != nil {
				return err
			}
			fmt.Println(netip.AddrFrom4(r.A))
		case dnsmessage.TypeAAAA:
			r, err := p.AAAAResource()
			if err != nil {
				return err
			}
			fmt.Println(netip.AddrFrom16(r.AAAA))
		case dnsmessage.TypeTXT:
			r, err := p.TXTResource()
			if err != nil {
				return err
			}
			fmt.Println(strings.Join(r.TXT, ""))
		default:
			if err := p.SkipAnswer(); err != nil {
				return err
			}
		}
	}
}

func exchange(server string, q []byte, useTCP bool, timeout time.Duration) ([]byte, error) {
	network := "udp"
	if useTCP {
		network = "tcp"
	}
	c, err := net.DialTimeout(network, server, timeout)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if !useTCP {
		if _, err := c.Write(q); err != nil {
			return nil, err
		}
		buf := make([]byte, 65535)
		n, err := c.Read(buf)
		return buf[:n], err
	}
	if _, err := c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(q))), q...)); err != nil {
		return nil, err
	}
	var l uint16
	if err := binary.Read(c, binary.BigEndian, &l); err != nil {
		return nil, err
	}
	buf := make([]byte, l)
	_, err = io.ReadFull(c, buf)
	return buf, err
}

func resolvConfServer(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "nameserver" {
			a, err := netip.ParseAddr(fields[1])
			if err != nil {
				return "", fmt.Errorf("%s: %w", path, err)
			}
			return netip.AddrPortFrom(a, 53).String(), nil
		}
	}
	return "", fmt.Errorf("%s: no nameserver", path)
}

// ---- cps ----

func cps(args []string) error {
	fs := flag.NewFlagSet("cps", flag.ExitOnError)
	url := fs.String("url", "", "URL to GET, one new connection per request")
	d := fs.Duration("d", 5*time.Second, "how long to measure")
	conc := fs.Int("c", 8, "connections in flight")
	fs.Parse(args)
	if *url == "" {
		return errors.New("cps: -url is required")
	}
	c := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil},
	}
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	ctx, cancel := context.WithTimeout(context.Background(), *d)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	for range *conc {
		wg.Go(func() {
			for ctx.Err() == nil {
				if err := getOnce(ctx, c, *url); err != nil {
					if ctx.Err() != nil {
						return // cut short by the end of the run: not a failure
					}
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				ok.Add(1)
			}
		})
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	res := map[string]any{"ok": ok.Load(), "errors": failed.Load(), "seconds": secs, "rate": float64(ok.Load()) / secs}
	if e, _ := firstErr.Load().(string); e != "" {
		res["first_error"] = e
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

func getOnce(ctx context.Context, c *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s", resp.Status)
	}
	return nil
}
