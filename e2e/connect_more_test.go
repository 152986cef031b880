package e2e

// wedge connect on the wire, in the single-node lab (SOCKS mode):
//
//   client ns                                 node ns (ip_forward OFF)          origin ns
//   wedge connect --socks 127.0.0.1:1080      wedged :51820 on 192.0.2.1,      originsrv :80
//     races [2001:db8:1::1]:51820 and           2001:db8:1::1 (lo)              (tc tbf for the
//     192.0.2.1:51820 (Happy Eyeballs)        tcpdump -i cl0 udp port 51820      reconnect test)
//   eth0 203.0.113.2 ─────────veth───────── cl0 203.0.113.1    or0 ──veth── eth0 198.18.0.2
//        2001:db8:c::2                          2001:db8:c::1
//   nft prerouting drops / blackhole          nft prerouting drops
//   routes (Happy Eyeballs)                   (Happy Eyeballs)
//
// TestConnectClientIDOnTheWire: a capture on the node's client-facing
// interface shows the registered ClientID in bytes 1..3 of every message
// wedge connect sends, initiations and transport data alike, and the node
// attributes the session to that ClientID.
//
// TestConnectHappyEyeballs: with one family to the node blackholed
// (silently dropped, or a blackhole route), wedge connect settles on the
// other within 2 s and traffic flows; with IPv6 lost after settling on it,
// it falls back to IPv4.
//
// TestConnectReconnect: a download through the SOCKS proxy survives the
// client's UDP socket being destroyed under it (ss -K), and the client's
// WAN addresses and routes disappearing for a second.

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wedge-edge/wedge/e2e/lab"
)

// connectLab is a single-node lab with wedged running and one client
// registered; connect starts wedge connect with that client's config.
type connectLab struct {
	s     *lab.SingleNode
	probe lab.Probe
	w     *lab.Wedged
	bins  lab.Bins
	conf  string // the config `wedge register` wrote
	path  string // where it is, for --config
}

func newConnectLab(t *testing.T) *connectLab {
	t.Helper()
	bins, err := lab.Build(binDir)
	if err != nil {
		t.Fatal(err)
	}
	s, probe := newSingleNode(t)
	w, err := s.StartWedged(bins.Wedged)
	if err != nil {
		t.Fatal(err)
	}
	conf, err := w.Register(bins.Wedge)
	if err != nil {
		t.Fatal(err)
	}
	path := s.Lab.Dir + "/connect.conf"
	if err := writeFile(path, conf); err != nil {
		t.Fatal(err)
	}
	return &connectLab{s: s, probe: probe, w: w, bins: bins, conf: conf, path: path}
}

// socksClient is wedge connect --socks running in the client namespace.
type socksClient struct {
	ns    *lab.NS // where wedge connect and the probe run
	probe string  // originsrv binary
	proc  *lab.Proc
	proxy string
}

const socksAddr = "127.0.0.1:1080"

// connect starts wedge connect in SOCKS mode (verbose, a status line every
// second) and waits until its proxy listens; no WireGuard message has
// been sent by then (wireguard-go handshakes on the first packet).
func (l *connectLab) connect(t *testing.T) *socksClient {
	t.Helper()
	return startSocksClient(t, l.s.Client, l.bins.Wedge, l.probe.Bin, l.path)
}

// startSocksClient runs wedge connect (the wedge binary) in ns with the
// config at path, as connectLab.connect does; probe is originsrv.
func startSocksClient(t *testing.T, ns *lab.NS, wedge, probe, path string) *socksClient {
	t.Helper()
	return startSocksClientAt(t, ns, wedge, probe, path, socksAddr)
}

// startSocksClientAt is startSocksClient with the proxy on addr, for
// several clients in one namespace.
func startSocksClientAt(t *testing.T, ns *lab.NS, wedge, probe, path, addr string) *socksClient {
	t.Helper()
	p, err := ns.Start("wedge-connect-"+addr[strings.LastIndexByte(addr, ':')+1:], nil, wedge, "connect", "--config", path,
		"--socks", addr, "--status-interval", "1s", "-v")
	if err != nil {
		t.Fatal(err)
	}
	c := &socksClient{ns: ns, probe: probe, proc: p, proxy: "socks5://" + addr}
	if _, ok := c.waitOutput(regexp.MustCompile(`wedge connect: SOCKS5 on `), 20*time.Second); !ok {
		t.Fatalf("wedge connect did not start its SOCKS proxy:\n%s", p.Output())
	}
	return c
}

// get fetches url through the proxy and returns the body.
func (c *socksClient) get(url string, timeout time.Duration, flags ...string) (string, error) {
	args := append([]string{c.probe, "get", "-proxy", c.proxy, "-timeout", timeout.String()}, flags...)
	out, err := c.ns.Run(append(args, url)...)
	return strings.TrimSpace(out), err
}

// remoteAddr fetches http://origin/ip through the proxy.
func (c *socksClient) remoteAddr(origin netip.Addr, timeout time.Duration) (netip.AddrPort, error) {
	body, err := c.get(fmt.Sprintf("http://%s/ip", netip.AddrPortFrom(origin, lab.HTTPPort)), timeout)
	if err != nil {
		return netip.AddrPort{}, err
	}
	return netip.ParseAddrPort(body)
}

// bytes downloads http://origin/bytes?n=N through the proxy and checks
// the body (originsrv get -check).
func (c *socksClient) bytes(origin netip.Addr, n int64, timeout time.Duration) (lab.BytesResult, error) {
	url := fmt.Sprintf("http://%s/bytes?n=%d", netip.AddrPortFrom(origin, lab.HTTPPort), n)
	out, err := c.get(url, timeout, "-check", strconv.FormatInt(n, 10))
	var r lab.BytesResult
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		return r, fmt.Errorf("get -check: %w: %s", err, out)
	}
	return r, nil
}

// waitUp retries a GET through the tunnel until one succeeds.
func (c *socksClient) waitUp(t *testing.T, timeout time.Duration) {
	t.Helper()
	var last error
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if c.proc != nil && c.proc.Exited() {
			t.Fatalf("wedge connect exited:\n%s", c.proc.Output())
		}
		if _, last = c.remoteAddr(lab.Origin4.Addr(), 3*time.Second); last == nil {
			return
		}
	}
	t.Fatalf("no path to the origin through wedge connect within %v: %v", timeout, last)
}

// waitOutput waits until wedge connect's output (stdout: status lines;
// stderr: slog) matches re and returns the match's submatches.
func (c *socksClient) waitOutput(re *regexp.Regexp, timeout time.Duration) ([]string, bool) {
	deadline := time.Now().Add(timeout)
	for {
		if m := re.FindStringSubmatch(c.proc.Output()); m != nil {
			return m, true
		}
		if c.proc.Exited() || time.Now().After(deadline) {
			return nil, false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// What wedge connect prints (client/ logs it, cmd/wedge prints
// the status line).
var (
	reSettled  = regexp.MustCompile(`msg="endpoint settled" family=(\d) endpoint=(\S+)`)
	reLost     = regexp.MustCompile(`msg="endpoint lost, racing IPv6 and IPv4 again" reason="([^"]*)"`)
	reReopened = regexp.MustCompile(`msg="socket reopened[^"]*" cause="([^"]*)"`)
)

// statusLineFor matches a status line naming the endpoint in use.
func statusLineFor(ep netip.AddrPort) *regexp.Regexp {
	return regexp.MustCompile(fmt.Sprintf(`(?m)^\S+  IPv%d %s for `, family(ep.Addr()), regexp.QuoteMeta(ep.String())))
}

func family(a netip.Addr) int {
	if a.Unmap().Is4() {
		return 4
	}
	return 6
}

// endpointOf returns the server endpoint of a family, as the config lists it.
func endpointOf(fam int) netip.AddrPort {
	if fam == 4 {
		return netip.AddrPortFrom(lab.VIP4, 51820)
	}
	return netip.AddrPortFrom(lab.VIP6, 51820)
}

// clientWAN returns the client's WAN address of a family.
func clientWAN(fam int) netip.Addr {
	if fam == 4 {
		return lab.ClientWAN4.Addr()
	}
	return lab.ClientWAN6.Addr()
}

// peerStatus returns the node's status entry for the peer registered with
// ClientID cid (nil if it has no session).
func peerStatus(t *testing.T, w *lab.Wedged, cid string) map[string]any {
	t.Helper()
	for _, p := range status(t, w).Peers {
		if p["client_id"] == cid {
			return p
		}
	}
	return nil
}

// peerEndpoint is the client endpoint the node has for the peer.
func peerEndpoint(t *testing.T, w *lab.Wedged, cid string) netip.AddrPort {
	t.Helper()
	p := peerStatus(t, w, cid)
	if p == nil {
		t.Fatalf("the node has no session for ClientID %s: %+v", cid, status(t, w).Peers)
	}
	s, _ := p["endpoint"].(string)
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		t.Fatalf("node status: peer endpoint %q: %v", s, err)
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// waitSeen waits until the node has matched the ClientID it reads from the
// client's messages to the registration (its join runs every 2 s), and
// checks the bind's counters.
func waitSeen(t *testing.T, w *lab.Wedged, cid string) {
	t.Helper()
	var seen string
	for deadline := time.Now().Add(6 * time.Second); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
		if p := peerStatus(t, w, cid); p != nil {
			seen, _ = p["client_id_seen"].(string)
		}
		if seen == cid {
			break
		}
	}
	if seen != cid {
		t.Errorf("wedged saw ClientID %q for the peer registered with %q", seen, cid)
	}
	if st := status(t, w).Bind; st.Stamped == 0 || st.Unstamped != 0 || st.Mismatches != 0 {
		t.Errorf("bind counters %+v: want only stamped messages and no mismatch", st)
	}
}

// reservedBytes returns the config's "#@ Reserved = [b1, b2, b3]", checked
// against its "#@ ClientID" (base64 of the same three bytes).
func reservedBytes(t *testing.T, conf string) [3]byte {
	t.Helper()
	m := regexp.MustCompile(`^\[(\d+), (\d+), (\d+)\]$`).FindStringSubmatch(configMeta(conf, "Reserved"))
	if m == nil {
		t.Fatalf("config has no \"#@ Reserved = [b1, b2, b3]\" line:\n%s", conf)
	}
	var r [3]byte
	for i := range r {
		n, err := strconv.Atoi(m[i+1])
		if err != nil || n > 255 {
			t.Fatalf("config: bad reserved byte %q", m[i+1])
		}
		r[i] = byte(n)
	}
	cid, err := base64.StdEncoding.DecodeString(configMeta(conf, "ClientID"))
	if err != nil || len(cid) != 3 || [3]byte(cid) != r {
		t.Fatalf("config: ClientID %q is not the base64 of Reserved %v", configMeta(conf, "ClientID"), r)
	}
	if r == [3]byte{} {
		t.Fatal("config: the registered ClientID is zero: nothing to look for on the wire")
	}
	return r
}

// WireGuard message types and fixed sizes (the protocol's, not wedge's).
const (
	wgInitiation  = 1
	wgResponse    = 2
	wgCookieReply = 3
	wgTransport   = 4
	wgKeepalive   = 32 // an empty transport message
)

var wgFixedSize = map[byte]int{wgInitiation: 148, wgResponse: 92, wgCookieReply: 64}

// checkWGMessage reports what is wrong with msg as one whole WireGuard
// message, "" if nothing.
func checkWGMessage(msg []byte) string {
	if len(msg) < 4 {
		return fmt.Sprintf("%d bytes: shorter than a WireGuard header", len(msg))
	}
	switch typ := msg[0]; typ {
	case wgInitiation, wgResponse, wgCookieReply:
		if len(msg) != wgFixedSize[typ] {
			return fmt.Sprintf("type %d of %d bytes, want %d", typ, len(msg), wgFixedSize[typ])
		}
	case wgTransport:
		// Header (16) + padded plaintext (a multiple of 16) + tag (16).
		if len(msg) < wgKeepalive || len(msg)%16 != 0 {
			return fmt.Sprintf("transport message of %d bytes (want 32 + 16·n)", len(msg))
		}
	default:
		return fmt.Sprintf("unknown message type %d", typ)
	}
	return ""
}

func TestConnectClientIDOnTheWire(t *testing.T) {
	needLab(t, slices.Concat(lab.ToolsOrigin, lab.ToolsClient, []string{"tcpdump", "ethtool"})...)
	l := newConnectLab(t)
	reserved := reservedBytes(t, l.conf)
	cid := configMeta(l.conf, "ClientID")

	// On a veth, a UDP GSO batch reaches the peer as one super-packet
	// and is split only at the receiving socket, so a capture would see
	// one datagram holding several messages. A real NIC segments before
	// the wire: have the client's kernel do that, so the capture sees
	// one message per datagram, as the node's NIC would. The client
	// still stamps every message of a batch itself.
	if _, err := l.s.Client.Run("ethtool", "-K", lab.ClientIf, "tx-udp-segmentation", "off"); err != nil {
		t.Fatal(err)
	}
	// Everything the client sends, and the node's handshake messages (not
	// its transport data: the download would swamp the capture). The
	// message type is the first payload byte; libpcap indexes udp[] for
	// IPv4 only.
	capture, err := l.s.Node.StartCapture(lab.NodeClientIf,
		"udp and (dst port 51820 or (src port 51820 and ((ip and udp[8] != 4) or (ip6 and ip6[48] != 4))))")
	if err != nil {
		t.Fatal(err)
	}

	c := l.connect(t)
	c.waitUp(t, 20*time.Second)
	// Data both ways over several round trips: a download (the client
	// sends the ACKs) and requests to both origins.
	const size = 4 << 20
	if r, err := c.bytes(lab.Origin4.Addr(), size, 30*time.Second); err != nil || !r.OK {
		t.Fatalf("download of %d bytes through the tunnel: %+v, %v", size, r, err)
	}
	for _, origin := range []netip.Addr{lab.Origin4.Addr(), lab.Origin6.Addr()} {
		got, err := c.remoteAddr(origin, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		checkEgressSeen(t, origin, got)
	}
	waitSeen(t, l.w, cid)
	peer := peerStatus(t, l.w, cid)
	if tx, _ := peer["tx_bytes"].(float64); tx < size {
		t.Errorf("node sent %v bytes to the peer with ClientID %s, want at least the %d downloaded", tx, cid, size)
	}
	nodeEndpoint := peerEndpoint(t, l.w, cid)

	// Nothing more from the client: stop it, then the capture, then read
	// the node's counters, so that both saw the same messages.
	c.proc.Stop()
	time.Sleep(200 * time.Millisecond)
	res, err := capture.Stop()
	if err != nil {
		t.Fatal(err)
	}
	stamped := status(t, l.w).Bind.Stamped

	wan := []netip.Addr{lab.ClientWAN4.Addr(), lab.ClientWAN6.Addr()}
	var fromClient, toClient int
	types := map[byte]int{}
	var dataMsgs int // transport messages carrying a packet
	sources := map[netip.AddrPort]bool{}
	bad := 0
	for i, d := range res.UDP {
		switch {
		case slices.Contains(wan, d.Src.Addr()) && d.Dst.Port() == 51820:
			fromClient++
		case slices.Contains(wan, d.Dst.Addr()) && d.Src.Port() == 51820:
			toClient++
			if len(d.Payload) > 0 && d.Payload[0] == wgResponse {
				types[0x80|wgResponse]++
			}
			continue
		default:
			t.Errorf("datagram %d %v → %v: not between the client's WAN and the node's port", i, d.Src, d.Dst)
			continue
		}
		sources[d.Src] = true
		msg := d.Payload
		problem := checkWGMessage(msg)
		switch {
		case d.Truncated():
			problem = fmt.Sprintf("truncated by the capture (%d of %d bytes)", len(msg), d.Len)
		case problem == "" && [3]byte(msg[1:4]) != reserved:
			problem = fmt.Sprintf("type %d carries reserved bytes %v, want the ClientID's %v", msg[0], msg[1:4], reserved)
		}
		if problem != "" {
			if bad++; bad <= 10 {
				t.Errorf("datagram %d from the client (%v → %v, %d bytes): %s", i, d.Src, d.Dst, len(msg), problem)
			}
			continue
		}
		types[msg[0]]++
		if msg[0] == wgTransport && len(msg) > wgKeepalive {
			dataMsgs++
		}
	}
	if bad > 10 {
		t.Errorf("... %d bad datagrams from the client in all", bad)
	}
	t.Logf("capture: %d packets (%d not UDP, kernel drops %d); from the client: %d (initiations %d, transport %d of which %d carry data); to the client: %d (responses %d); node counted %d stamped",
		res.Packets, res.Skipped, res.KernelDrops, fromClient, types[wgInitiation], types[wgTransport], dataMsgs, toClient, types[0x80|wgResponse], stamped)
	if types[wgInitiation] == 0 {
		t.Error("the capture holds no handshake initiation from the client")
	}
	if types[0x80|wgResponse] == 0 {
		t.Error("the capture holds no handshake response from the node: did it see both directions?")
	}
	// Four requests and their ACKs: dozens of transport messages.
	if dataMsgs < 20 {
		t.Errorf("the capture holds %d transport messages with data from the client, want dozens", dataMsgs)
	}
	// The node's bind counted the stamped messages it read: the same as
	// the capture saw arrive, unless the capture or the socket dropped
	// some.
	if res.KernelDrops == 0 && stamped != uint64(fromClient) {
		t.Errorf("node counted %d stamped messages, the capture saw %d from the client", stamped, fromClient)
	}
	// The node attributes the session to the endpoint the stamped
	// messages came from.
	if !sources[nodeEndpoint] {
		t.Errorf("node's endpoint for ClientID %s is %v; the client's messages came from %v", cid, nodeEndpoint, mapKeys(sources))
	}
}

func mapKeys[K comparable, V any](m map[K]V) []K {
	var ks []K
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

// blockPath cuts the UDP path between the client and the node's endpoint
// of one family:
//
//   - "drop": silently, both ways: nft drops in prerouting of the node
//     (what the client sends) and of the client (what the node sends).
//     Nothing tells the client; only the missing answers do. It returns
//     the number of the client's packets the node's rule dropped so far.
//   - "route": a blackhole route to the endpoint in the client
//     namespace: sends fail at once (EINVAL). It returns nil.
func blockPath(t *testing.T, s *lab.SingleNode, fam int, how string) func() int {
	t.Helper()
	ep, wan := endpointOf(fam), clientWAN(fam)
	switch how {
	case "route":
		ipf := "-4"
		if fam == 6 {
			ipf = "-6"
		}
		if _, err := s.Client.Run("ip", ipf, "route", "add", "blackhole", netip.PrefixFrom(ep.Addr(), ep.Addr().BitLen()).String()); err != nil {
			t.Fatal(err)
		}
		return nil
	case "drop":
		ipf := "ip"
		if fam == 6 {
			ipf = "ip6"
		}
		rules := []struct {
			ns   *lab.NS
			rule string
		}{
			{s.Node, fmt.Sprintf("%s saddr %s udp dport %d counter drop", ipf, wan, ep.Port())},
			{s.Client, fmt.Sprintf("%s saddr %s udp sport %d counter drop", ipf, ep.Addr(), ep.Port())},
		}
		for _, r := range rules {
			for _, cmd := range [][]string{
				{"nft", "add", "table", "inet", "wedgetest"},
				{"nft", "add", "chain", "inet", "wedgetest", "pre", "{ type filter hook prerouting priority -300; }"},
				append([]string{"nft", "add", "rule", "inet", "wedgetest", "pre"}, strings.Fields(r.rule)...),
			} {
				if _, err := r.ns.Run(cmd...); err != nil {
					t.Fatal(err)
				}
			}
		}
		return func() int {
			out, err := s.Node.Run("nft", "list", "chain", "inet", "wedgetest", "pre")
			if err != nil {
				t.Fatal(err)
			}
			m := regexp.MustCompile(`counter packets (\d+)`).FindStringSubmatch(out)
			if m == nil {
				t.Fatalf("no counter in the node's drop rule:\n%s", out)
			}
			n, _ := strconv.Atoi(m[1])
			return n
		}
	}
	t.Fatalf("blockPath: unknown way %q", how)
	return nil
}

func TestConnectHappyEyeballs(t *testing.T) {
	needLab(t, slices.Concat(lab.ToolsOrigin, lab.ToolsClient, []string{"nft"})...)

	// The first request through a fresh wedge connect starts the
	// handshake (the config has no PersistentKeepalive); it must succeed,
	// over the family left, within this.
	const settleWithin = 2 * time.Second

	for _, tc := range []struct {
		name    string
		blocked int    // the family cut between client and node
		how     string // see blockPath
	}{
		{"v6-dropped", 6, "drop"},
		{"v6-blackhole-route", 6, "route"},
		{"v4-dropped", 4, "drop"},
		{"v4-blackhole-route", 4, "route"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newConnectLab(t)
			cid := configMeta(l.conf, "ClientID")
			for _, fam := range []int{4, 6} {
				if !strings.Contains(l.conf, "#@ Endpoint = "+endpointOf(fam).String()) {
					t.Fatalf("the config lacks the IPv%d endpoint %v:\n%s", fam, endpointOf(fam), l.conf)
				}
			}
			dropped := blockPath(t, l.s, tc.blocked, tc.how)
			want := 10 - tc.blocked // the other family
			c := l.connect(t)

			start := time.Now()
			got, err := c.remoteAddr(lab.Origin4.Addr(), 10*time.Second)
			took := time.Since(start)
			if err != nil {
				t.Fatalf("first request through wedge connect with IPv%d blocked: %v", tc.blocked, err)
			}
			checkEgressSeen(t, lab.Origin4.Addr(), got)
			t.Logf("IPv%d blocked (%s): first request answered in %v", tc.blocked, tc.how, took.Round(time.Millisecond))
			if took > settleWithin {
				t.Errorf("first request took %v with IPv%d blocked; Happy Eyeballs must get through over IPv%d within %v",
					took.Round(time.Millisecond), tc.blocked, want, settleWithin)
			}

			m, ok := c.waitOutput(reSettled, time.Second)
			if !ok {
				t.Fatalf("wedge connect logged no \"endpoint settled\"")
			}
			if m[1] != strconv.Itoa(want) || m[2] != endpointOf(want).String() {
				t.Errorf("wedge connect settled on IPv%s %s, want IPv%d %v", m[1], m[2], want, endpointOf(want))
			}
			if _, ok := c.waitOutput(statusLineFor(endpointOf(want)), 3*time.Second); !ok {
				t.Errorf("no status line shows IPv%d %v in use", want, endpointOf(want))
			}
			// The node sees the session from the client's address of
			// that family, stamped.
			if ep := peerEndpoint(t, l.w, cid); ep.Addr() != clientWAN(want) {
				t.Errorf("node has the client at %v, want its IPv%d address %v", ep, want, clientWAN(want))
			}
			waitSeen(t, l.w, cid)
			// Traffic flows, to both inner families.
			for _, origin := range []netip.Addr{lab.Origin4.Addr(), lab.Origin6.Addr()} {
				got, err := c.remoteAddr(origin, 5*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				checkEgressSeen(t, origin, got)
			}
			if r, err := c.bytes(lab.Origin6.Addr(), 1<<20, 20*time.Second); err != nil || !r.OK {
				t.Errorf("download through the tunnel: %+v, %v", r, err)
			}
			// Settled straight away, not after losing a path.
			if m := reLost.FindStringSubmatch(c.proc.Output()); m != nil {
				t.Errorf("wedge connect dropped a settled path: %s", m[1])
			}
			// IPv6 goes first: with IPv6 silently dropped, the node's
			// rule must have caught the client's initiation over it.
			if tc.blocked == 6 && dropped != nil {
				if n := dropped(); n == 0 {
					t.Error("the node dropped no IPv6 packet from the client: it never tried IPv6 first")
				} else {
					t.Logf("node dropped %d IPv6 packets from the client", n)
				}
			}
			if p := peerEndpoint(t, l.w, cid); p.Addr() != clientWAN(want) {
				t.Errorf("after the transfers the node has the client at %v, want its IPv%d address", p, want)
			}
		})
	}

	// Settled on IPv6, then IPv6 goes silent: the client notices that
	// nothing answers (client.DefaultStaleAfter, 12 s), races again and
	// carries on over IPv4.
	t.Run("v6-lost-after-settling", func(t *testing.T) {
		l := newConnectLab(t)
		cid := configMeta(l.conf, "ClientID")
		c := l.connect(t)
		c.waitUp(t, 10*time.Second)
		if m, ok := c.waitOutput(reSettled, time.Second); !ok || m[1] != "6" {
			t.Fatalf("with both families working wedge connect settled on %v, want IPv6", m)
		}
		blockPath(t, l.s, 6, "drop")

		start := time.Now()
		var last error
		for time.Since(start) < 30*time.Second {
			if _, last = c.remoteAddr(lab.Origin4.Addr(), 3*time.Second); last == nil {
				break
			}
		}
		took := time.Since(start)
		if last != nil {
			t.Fatalf("no traffic through wedge connect within 30 s of losing IPv6: %v", last)
		}
		t.Logf("traffic flows again %v after IPv6 went silent", took.Round(100*time.Millisecond))
		m, ok := c.waitOutput(reLost, time.Second)
		if !ok {
			t.Fatal("wedge connect logged no \"endpoint lost\"")
		}
		if !strings.Contains(m[1], "no answer over IPv6") {
			t.Errorf("wedge connect lost IPv6 for %q, want no answer over IPv6", m[1])
		}
		if all := reSettled.FindAllStringSubmatch(c.proc.Output(), -1); len(all) != 2 || all[1][1] != "4" {
			t.Errorf("wedge connect settled on %v, want IPv6 then IPv4", all)
		}
		if _, ok := c.waitOutput(regexp.MustCompile(`IPv4 `+regexp.QuoteMeta(endpointOf(4).String())+` for .*fallbacks 1 \(last: no answer over IPv6`), 3*time.Second); !ok {
			t.Error("no status line shows IPv4 in use after one fallback")
		}
		if ep := peerEndpoint(t, l.w, cid); ep.Addr() != lab.ClientWAN4.Addr() {
			t.Errorf("node has the client at %v after the fallback, want its IPv4 address", ep)
		}
		waitSeen(t, l.w, cid)
	})
}

func TestConnectReconnect(t *testing.T) {
	needLab(t, slices.Concat(lab.ToolsOrigin, lab.ToolsClient, []string{"tc"})...)

	// Both breaks leave the tunnel's inner TCP connection to the origin
	// (one HTTP download) to survive on its own: the client's device,
	// keys and netstack stay; only what is under the Bind changes.
	t.Run("socket-destroyed", func(t *testing.T) {
		// ss -K destroys the client's UDP sockets (the kernel aborts
		// them: a pending receive fails with ECONNABORTED and the socket
		// is unhashed, so it never receives again): a client that keeps
		// reading it is cut off for good. wedge connect must reopen it.
		d := startDownload(t)
		port := d.c.port(t)
		out, err := d.l.s.Client.Run("ss", "-K", "-H", "-n", "-u", "-a", fmt.Sprintf("sport = :%d", port))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Count(out, fmt.Sprintf(":%d ", port)) == 0 {
			t.Fatalf("ss -K destroyed no socket on port %d:\n%s", port, out)
		}
		t.Logf("destroyed:\n%s", strings.TrimSpace(out))
		if d.finished() {
			t.Fatal("the download ended before the break")
		}
		d.check(t)
		m, ok := d.c.waitOutput(reReopened, time.Second)
		if !ok {
			t.Fatal("wedge connect logged no socket reopen after its socket was destroyed")
		}
		if !strings.HasPrefix(m[1], "receive:") {
			t.Errorf("wedge connect reopened its socket for %q, want a receive error", m[1])
		}
	})

	t.Run("addresses-gone", func(t *testing.T) {
		// The client's WAN addresses and default routes disappear for a
		// second, as when a laptop's network drops, and come back. A new
		// request made meanwhile makes the client send while it has no
		// route: sends fail (ENETUNREACH). The routes matter: removing
		// the last IPv4 address takes the IPv4 default route with it,
		// but the IPv6 one stays, and with it the kernel sends from the
		// link-local address (wedged roams to it and nothing breaks) or,
		// without one, from ::1 (the packets are lost, silently).
		d := startDownload(t)
		s := d.l.s
		for _, p := range []netip.Prefix{lab.ClientWAN4, lab.ClientWAN6} {
			if _, err := s.Client.Run("ip", "addr", "del", p.String(), "dev", lab.ClientIf); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := s.Client.Run("ip", "-6", "route", "del", "default"); err != nil {
			t.Fatal(err)
		}
		if out, _ := s.Client.Run("ip", "route", "show", "default"); strings.TrimSpace(out) != "" {
			t.Fatalf("the IPv4 default route outlived the client's address: %s", out)
		}
		breakAt := time.Now()
		poke := make(chan error, 1)
		go func() {
			_, err := d.c.remoteAddr(lab.Origin6.Addr(), 15*time.Second)
			poke <- err
		}()
		time.Sleep(time.Second)
		if d.finished() {
			t.Fatal("the download ended while the client had no address")
		}
		for _, p := range []netip.Prefix{lab.ClientWAN4, lab.ClientWAN6} {
			if err := s.Client.AddrAdd(lab.ClientIf, p); err != nil {
				t.Fatal(err)
			}
		}
		for _, gw := range []netip.Addr{lab.NodeWAN4.Addr(), lab.NodeWAN6.Addr()} {
			if _, err := s.Client.Run("ip", "route", "add", "default", "via", gw.String()); err != nil {
				t.Fatal(err)
			}
		}
		t.Logf("addresses gone for %v", time.Since(breakAt).Round(time.Millisecond))
		d.restoredAt = time.Now()
		d.check(t)
		if err := <-poke; err != nil {
			t.Errorf("a request made while the client had no address: %v", err)
		}
		if m, ok := d.c.waitOutput(reReopened, time.Second); !ok {
			t.Error("wedge connect logged no socket reopen: it never noticed the break")
		} else if !strings.HasPrefix(m[1], "send:") {
			t.Errorf("wedge connect reopened its socket for %q, want a send error", m[1])
		}
	})
}

// download is a download through wedge connect, started by startDownload.
type download struct {
	l          *connectLab
	c          *socksClient
	cid        string
	size       int64
	done       chan downloadResult
	restoredAt time.Time // when the break ended; zero: at once
}

type downloadResult struct {
	r   lab.BytesResult
	err error
	at  time.Time
}

// startDownload makes a lab whose origin sends at 40 Mbit/s, starts wedge
// connect, and starts a 24 MiB download through it (about 5 s); it returns
// once the node has sent 2 MiB of it.
func startDownload(t *testing.T) *download {
	t.Helper()
	l := newConnectLab(t)
	if _, err := l.s.Origin.Run("tc", "qdisc", "add", "dev", lab.OriginIf, "root", "tbf",
		"rate", "40mbit", "burst", "64kb", "latency", "100ms"); err != nil {
		t.Fatal(err)
	}
	d := &download{l: l, c: l.connect(t), cid: configMeta(l.conf, "ClientID"), size: 24 << 20, done: make(chan downloadResult, 1)}
	d.c.waitUp(t, 20*time.Second)
	waitSeen(t, l.w, d.cid)
	txBefore, _ := peerStatus(t, l.w, d.cid)["tx_bytes"].(float64)
	go func() {
		r, err := d.c.bytes(lab.Origin4.Addr(), d.size, 60*time.Second)
		d.done <- downloadResult{r, err, time.Now()}
	}()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if d.finished() {
			t.Fatal("the download ended before the break")
		}
		tx, _ := peerStatus(t, l.w, d.cid)["tx_bytes"].(float64)
		if tx-txBefore >= 2<<20 {
			return d
		}
		if time.Now().After(deadline) {
			t.Fatalf("the download did not get going: the node sent %v bytes in 20 s", tx-txBefore)
		}
	}
}

// finished reports whether the download has ended.
func (d *download) finished() bool {
	select {
	case res := <-d.done:
		d.done <- res
		return true
	default:
		return false
	}
}

// check waits for the download and checks it got every byte, and that the
// client still runs and is still attributed its ClientID.
func (d *download) check(t *testing.T) {
	t.Helper()
	if d.restoredAt.IsZero() {
		d.restoredAt = time.Now()
	}
	var res downloadResult
	select {
	case res = <-d.done:
	case <-time.After(70 * time.Second):
		t.Fatal("the download did not end within 70 s of the break")
	}
	if res.err != nil {
		t.Fatalf("the download across the break failed: %v", res.err)
	}
	if res.r.N != d.size || !res.r.OK {
		t.Fatalf("the download across the break got %d bytes (pattern ok: %v), want %d", res.r.N, res.r.OK, d.size)
	}
	t.Logf("download of %d bytes done %v after the break", d.size, res.at.Sub(d.restoredAt).Round(time.Millisecond))
	if d.c.proc.Exited() {
		t.Fatalf("wedge connect exited:\n%s", d.c.proc.Output())
	}
	out := d.c.proc.Output()
	for _, m := range reReopened.FindAllStringSubmatch(out, -1) {
		t.Logf("wedge connect reopened its socket: %s", m[1])
	}
	for _, m := range reLost.FindAllStringSubmatch(out, -1) {
		t.Logf("wedge connect lost its path: %s", m[1])
	}
	waitSeen(t, d.l.w, d.cid)
}

// port returns the local UDP port wedge connect's status line shows.
func (c *socksClient) port(t *testing.T) uint16 {
	t.Helper()
	m, ok := c.waitOutput(regexp.MustCompile(`(?m)^\S+  IPv\d .*  port (\d+)`), 3*time.Second)
	if !ok {
		t.Fatalf("no status line with the local port:\n%s", c.proc.Output())
	}
	p, _ := strconv.ParseUint(m[1], 10, 16)
	return uint16(p)
}
