package client

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wedge-edge/wedge/internal/clientid"
)

// Config is a client configuration as `wedge register` writes it: a
// wg-quick file with one [Interface] and one [Peer], plus wedge's
// "#@ Key = value" lines, which wg-quick reads as comments.
type Config struct {
	// [Interface]
	PrivateKey wgtypes.Key
	Addresses  []netip.Prefix // Address, in file order
	DNS        []netip.Addr   // DNS entries that are addresses
	DNSSearch  []string       // DNS entries that are not (search domains)
	MTU        int            // 0: not set
	ListenPort uint16         // 0: any
	FwMark     uint32         // 0: not set

	Peer Peer

	// "#@" lines.
	Registration string
	API          string
	// Token is the registration's bearer token for the public API
	// ("#@ Token"); Fingerprint the SHA-256 of the API's certificate to
	// pin ("#@ Fingerprint", lower-case hex). Either may be empty.
	Token       string
	Fingerprint string
	// ClientID is stamped into bytes 1..3 of every message; 0 when the
	// file has neither a ClientID nor a Reserved line (a standard client).
	ClientID clientid.ID
	// Endpoints are the server's advertised endpoints, v4 and v6, in file
	// order. Empty when the file has no "#@ Endpoint" line.
	Endpoints []netip.AddrPort

	// Ignored lists wg-quick keys wedge connect does not act on (PostUp,
	// Table, ...), as "line N: Key", for a warning. Hooks never run.
	Ignored []string
}

// Peer is the [Peer] section.
type Peer struct {
	PublicKey    wgtypes.Key
	PresharedKey wgtypes.Key // zero: none
	AllowedIPs   []netip.Prefix
	// Endpoint is the wg-quick Endpoint, host:port; the host may be a
	// name. Empty when not set.
	Endpoint            string
	PersistentKeepalive int // seconds, 0: off
}

// ErrSyntax is wrapped by every Parse error; the message names the line.
var ErrSyntax = errors.New("client config")

const (
	maxConfigBytes = 1 << 20
	maxLineBytes   = 8 << 10
	maxListItems   = 1024
)

// Parse reads a client configuration. It is strict about what wedge
// connect uses (keys, addresses, ports) and rejects unknown keys, but
// accepts and lists in Config.Ignored the wg-quick keys it deliberately
// ignores (hooks, Table, SaveConfig). Errors name the line.
func Parse(r io.Reader) (*Config, error) {
	p := parser{c: &Config{}}
	sc := bufio.NewScanner(io.LimitReader(r, maxConfigBytes+1))
	sc.Buffer(make([]byte, 0, 4096), maxLineBytes)
	read := 0
	for sc.Scan() {
		p.line++
		read += len(sc.Bytes()) + 1
		if read > maxConfigBytes {
			return nil, fmt.Errorf("%w: larger than %d bytes", ErrSyntax, maxConfigBytes)
		}
		if err := p.parseLine(sc.Text()); err != nil {
			return nil, fmt.Errorf("%w: line %d: %w", ErrSyntax, p.line, err)
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, fmt.Errorf("%w: line %d: longer than %d bytes", ErrSyntax, p.line+1, maxLineBytes)
		}
		return nil, fmt.Errorf("%w: %w", ErrSyntax, err)
	}
	if err := p.finish(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSyntax, err)
	}
	return p.c, nil
}

type parser struct {
	c       *Config
	line    int
	section string // "", "interface", "peer"
	peers   int
	seen    map[string]int // key (section/key) → line, for duplicates

	reserved     [3]byte
	reservedLine int
	clientIDLine int
	privLine     int
}

func (p *parser) parseLine(raw string) error {
	s := strings.TrimSpace(raw)
	if rest, ok := strings.CutPrefix(s, "#@"); ok {
		return p.wedgeLine(rest)
	}
	// wg-quick strips everything after '#'.
	if i := strings.IndexByte(s, '#'); i >= 0 {
		s = strings.TrimSpace(s[:i])
	}
	if s == "" {
		return nil
	}
	if strings.HasPrefix(s, "[") {
		if !strings.HasSuffix(s, "]") {
			return fmt.Errorf("bad section header %q", s)
		}
		switch sec := strings.ToLower(strings.TrimSpace(s[1 : len(s)-1])); sec {
		case "interface":
			if p.seen["interface"] != 0 {
				return fmt.Errorf("second [Interface] section (first on line %d)", p.seen["interface"])
			}
			p.mark("interface")
			p.section = sec
		case "peer":
			p.peers++
			if p.peers > 1 {
				return errors.New("second [Peer] section: wedge connect talks to exactly one server")
			}
			p.section = sec
		default:
			return fmt.Errorf("unknown section %q", s)
		}
		return nil
	}
	key, val, ok := strings.Cut(s, "=")
	if !ok {
		return fmt.Errorf("want Key = value, got %q", s)
	}
	key, val = strings.TrimSpace(key), strings.TrimSpace(val)
	switch p.section {
	case "interface":
		return p.interfaceKey(key, val)
	case "peer":
		return p.peerKey(key, val)
	}
	return fmt.Errorf("%s outside a section", key)
}

// mark records key's line and reports a duplicate.
func (p *parser) mark(key string) error {
	if p.seen == nil {
		p.seen = map[string]int{}
	}
	if l, ok := p.seen[key]; ok {
		return fmt.Errorf("duplicate %s (first on line %d)", key, l)
	}
	p.seen[key] = p.line
	return nil
}

func (p *parser) interfaceKey(key, val string) error {
	c := p.c
	lk := strings.ToLower(key)
	switch lk {
	case "privatekey", "mtu", "listenport", "fwmark":
		if err := p.mark("interface/" + lk); err != nil {
			return err
		}
	}
	switch lk {
	case "privatekey":
		k, err := wgtypes.ParseKey(val)
		if err != nil {
			return fmt.Errorf("PrivateKey: not a base64 key")
		}
		c.PrivateKey, p.privLine = k, p.line
	case "address":
		return eachItem(val, "Address", func(v string) error {
			pfx, err := parsePrefix(v)
			if err != nil {
				return fmt.Errorf("Address %q: %w", v, err)
			}
			c.Addresses = append(c.Addresses, pfx)
			return nil
		}, len(c.Addresses))
	case "dns":
		return eachItem(val, "DNS", func(v string) error {
			if a, err := netip.ParseAddr(v); err == nil {
				c.DNS = append(c.DNS, a.Unmap())
				return nil
			}
			if !plainName(v) {
				return fmt.Errorf("DNS %q is neither an address nor a search domain", v)
			}
			c.DNSSearch = append(c.DNSSearch, v)
			return nil
		}, len(c.DNS)+len(c.DNSSearch))
	case "mtu":
		n, err := strconv.Atoi(val)
		if err != nil || n < 576 || n > 65535 {
			return fmt.Errorf("MTU %q: want 576..65535", val)
		}
		c.MTU = n
	case "listenport":
		n, err := strconv.ParseUint(val, 10, 16)
		if err != nil {
			return fmt.Errorf("ListenPort %q: want 0..65535", val)
		}
		c.ListenPort = uint16(n)
	case "fwmark":
		if val == "off" {
			return nil
		}
		n, err := strconv.ParseUint(val, 0, 32)
		if err != nil {
			return fmt.Errorf("FwMark %q: want a 32-bit number or off", val)
		}
		c.FwMark = uint32(n)
	case "table", "preup", "postup", "predown", "postdown", "saveconfig":
		c.Ignored = append(c.Ignored, fmt.Sprintf("line %d: %s", p.line, key))
	default:
		return fmt.Errorf("unknown [Interface] key %q", key)
	}
	return nil
}

func (p *parser) peerKey(key, val string) error {
	c := &p.c.Peer
	lk := strings.ToLower(key)
	if lk != "allowedips" {
		if err := p.mark("peer/" + lk); err != nil {
			return err
		}
	}
	switch lk {
	case "publickey":
		k, err := wgtypes.ParseKey(val)
		if err != nil {
			return fmt.Errorf("PublicKey: not a base64 key")
		}
		c.PublicKey = k
	case "presharedkey":
		k, err := wgtypes.ParseKey(val)
		if err != nil {
			return fmt.Errorf("PresharedKey: not a base64 key")
		}
		c.PresharedKey = k
	case "allowedips":
		return eachItem(val, "AllowedIPs", func(v string) error {
			pfx, err := parsePrefix(v)
			if err != nil {
				return fmt.Errorf("AllowedIPs %q: %w", v, err)
			}
			c.AllowedIPs = append(c.AllowedIPs, pfx.Masked())
			return nil
		}, len(c.AllowedIPs))
	case "endpoint":
		if _, err := parseHostPort(val); err != nil {
			return fmt.Errorf("Endpoint %q: %w", val, err)
		}
		c.Endpoint = val
	case "persistentkeepalive":
		if val == "off" {
			return nil
		}
		n, err := strconv.ParseUint(val, 10, 16)
		if err != nil {
			return fmt.Errorf("PersistentKeepalive %q: want 0..65535 or off", val)
		}
		c.PersistentKeepalive = int(n)
	default:
		return fmt.Errorf("unknown [Peer] key %q", key)
	}
	return nil
}

// wedgeLine parses the part of a "#@ Key = value" line after "#@". Unknown
// keys are skipped, so newer files still load.
func (p *parser) wedgeLine(rest string) error {
	key, val, ok := strings.Cut(rest, "=")
	if !ok {
		return fmt.Errorf("want \"#@ Key = value\", got %q", "#@"+rest)
	}
	key, val = strings.TrimSpace(key), strings.TrimSpace(val)
	c := p.c
	lk := strings.ToLower(key)
	if lk != "endpoint" {
		if err := p.mark("#@" + lk); err != nil {
			return err
		}
	}
	switch lk {
	case "registration":
		if !plainName(val) {
			return fmt.Errorf("Registration %q: want printable text", val)
		}
		c.Registration = val
	case "api":
		if !plainName(val) {
			return fmt.Errorf("API %q: want a URL", val)
		}
		c.API = val
	case "token":
		if !plainName(val) {
			return errors.New("Token: want printable text without spaces")
		}
		c.Token = val
	case "fingerprint":
		fp, err := ParseFingerprint(val)
		if err != nil {
			return err
		}
		c.Fingerprint = fp
	case "clientid":
		id, err := clientid.Parse(val)
		if err != nil {
			return fmt.Errorf("ClientID: %w", err)
		}
		c.ClientID, p.clientIDLine = id, p.line
	case "reserved":
		b, err := parseReserved(val)
		if err != nil {
			return fmt.Errorf("Reserved %q: %w", val, err)
		}
		p.reserved, p.reservedLine = b, p.line
	case "endpoint":
		ap, err := netip.ParseAddrPort(val)
		if err != nil || ap.Port() == 0 || ap.Addr().Zone() != "" {
			return fmt.Errorf("Endpoint %q: want ip:port or [ip6]:port", val)
		}
		if len(c.Endpoints) >= 16 {
			return errors.New("more than 16 #@ Endpoint lines")
		}
		ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		for _, e := range c.Endpoints {
			if e == ap {
				return nil
			}
		}
		c.Endpoints = append(c.Endpoints, ap)
	}
	return nil
}

func (p *parser) finish() error {
	c := p.c
	if p.seen["interface"] == 0 {
		return errors.New("no [Interface] section")
	}
	if p.privLine == 0 {
		return errors.New("[Interface] has no PrivateKey")
	}
	if len(c.Addresses) == 0 {
		return errors.New("[Interface] has no Address")
	}
	if p.peers == 0 {
		return errors.New("no [Peer] section")
	}
	if c.Peer.PublicKey == (wgtypes.Key{}) {
		return errors.New("[Peer] has no PublicKey")
	}
	if c.Peer.Endpoint == "" && len(c.Endpoints) == 0 {
		return errors.New("no endpoint: [Peer] has no Endpoint and there is no #@ Endpoint line")
	}
	if p.reservedLine != 0 {
		id := clientid.FromBytes(p.reserved)
		switch {
		case p.clientIDLine == 0 && id == 0:
			// "Reserved = [0, 0, 0]": explicitly unstamped.
		case p.clientIDLine == 0:
			c.ClientID = id
		case id != c.ClientID:
			return fmt.Errorf("line %d: Reserved = %v disagrees with the ClientID on line %d (%v)",
				p.reservedLine, p.reserved, p.clientIDLine, c.ClientID.Bytes())
		}
	}
	return nil
}

// Reserved returns the ClientID as the three reserved bytes third-party
// clients take.
func (c *Config) Reserved() [3]byte { return c.ClientID.Bytes() }

// ServerEndpoints returns the endpoints to race: the first IPv6 and the
// first IPv4 "#@ Endpoint", or, without those, the [Peer] Endpoint when it
// is a literal address. ok is false when the [Peer] Endpoint is a name,
// which the caller resolves.
func (c *Config) ServerEndpoints() (eps []netip.AddrPort, ok bool) {
	var v4, v6 netip.AddrPort
	for _, e := range c.Endpoints {
		if e.Addr().Is4() && !v4.IsValid() {
			v4 = e
		}
		if e.Addr().Is6() && !v6.IsValid() {
			v6 = e
		}
	}
	if !v4.IsValid() && !v6.IsValid() {
		ap, err := netip.ParseAddrPort(c.Peer.Endpoint)
		if err != nil {
			return nil, false
		}
		return []netip.AddrPort{netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())}, true
	}
	for _, e := range []netip.AddrPort{v6, v4} {
		if e.IsValid() {
			eps = append(eps, e)
		}
	}
	return eps, true
}

// UAPI renders the device configuration for wireguard-go's IpcSet, with
// endpoint as the peer's endpoint string (DualEndpoint for a Bind with
// Endpoints).
func (c *Config) UAPI(endpoint string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "private_key=%x\nlisten_port=%d\n", c.PrivateKey[:], c.ListenPort)
	if c.FwMark != 0 {
		fmt.Fprintf(&b, "fwmark=%d\n", c.FwMark)
	}
	fmt.Fprintf(&b, "replace_peers=true\npublic_key=%x\n", c.Peer.PublicKey[:])
	if c.Peer.PresharedKey != (wgtypes.Key{}) {
		fmt.Fprintf(&b, "preshared_key=%x\n", c.Peer.PresharedKey[:])
	}
	if endpoint != "" {
		fmt.Fprintf(&b, "endpoint=%s\n", endpoint)
	}
	fmt.Fprintf(&b, "persistent_keepalive_interval=%d\nreplace_allowed_ips=true\n", c.Peer.PersistentKeepalive)
	for _, a := range c.Peer.AllowedIPs {
		fmt.Fprintf(&b, "allowed_ip=%s\n", a)
	}
	return b.String()
}

// eachItem calls fn for each comma-separated item of val.
func eachItem(val, what string, fn func(string) error, have int) error {
	for _, v := range strings.Split(val, ",") {
		v = strings.TrimSpace(v)
		if v == "" {
			return fmt.Errorf("%s: empty item in %q", what, val)
		}
		if have++; have > maxListItems {
			return fmt.Errorf("%s: more than %d items", what, maxListItems)
		}
		if err := fn(v); err != nil {
			return err
		}
	}
	return nil
}

// parsePrefix accepts "ip/bits" or a bare ip (a host prefix), as wg-quick.
func parsePrefix(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return netip.Prefix{}, errors.New("not an address or prefix")
		}
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	pfx, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, errors.New("not an address or prefix")
	}
	if pfx.Addr().Is4In6() {
		if pfx.Bits() < 96 {
			return netip.Prefix{}, errors.New("v4-mapped prefix shorter than /96")
		}
		pfx = netip.PrefixFrom(pfx.Addr().Unmap(), pfx.Bits()-96)
	}
	return pfx, nil
}

func parseHostPort(s string) (uint16, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return 0, errors.New("want host:port")
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return 0, errors.New("bad port")
	}
	if host == "" || !plainName(host) {
		return 0, errors.New("bad host")
	}
	return uint16(n), nil
}

// parseReserved reads "[b1, b2, b3]".
func parseReserved(s string) ([3]byte, error) {
	var b [3]byte
	in, ok1 := strings.CutPrefix(s, "[")
	in, ok2 := strings.CutSuffix(in, "]")
	if !ok1 || !ok2 {
		return b, errors.New("want [b1, b2, b3]")
	}
	parts := strings.Split(in, ",")
	if len(parts) != 3 {
		return b, errors.New("want three bytes")
	}
	for i, part := range parts {
		n, err := strconv.ParseUint(strings.TrimSpace(part), 10, 8)
		if err != nil {
			return b, fmt.Errorf("%q is not a byte", strings.TrimSpace(part))
		}
		b[i] = byte(n)
	}
	return b, nil
}

// plainName reports whether s is non-empty printable ASCII without spaces.
func plainName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}
