package wgmsg

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/conn/bindtest"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/tuntest"
)

// keyPair is an X25519 key pair as wireguard-go takes it.
type keyPair struct{ priv, pub [32]byte }

func newKeyPair(tb testing.TB) keyPair {
	tb.Helper()
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	var kp keyPair
	copy(kp.priv[:], k.Bytes())
	copy(kp.pub[:], k.PublicKey().Bytes())
	return kp
}

// fixedKeyPair derives a key pair from seed, for fuzz targets whose inputs
// must mean the same thing on every run.
func fixedKeyPair(tb testing.TB, seed string) keyPair {
	tb.Helper()
	sum := sha256.Sum256([]byte(seed))
	k, err := ecdh.X25519().NewPrivateKey(sum[:])
	if err != nil {
		tb.Fatal(err)
	}
	var kp keyPair
	copy(kp.priv[:], k.Bytes())
	copy(kp.pub[:], k.PublicKey().Bytes())
	return kp
}

// hookBind runs recv on every received message before wireguard-go sees it
// and send on every message wireguard-go sends, both in place: the shape of
// the server Bind that will carry a Translator.
type hookBind struct {
	conn.Bind
	recv func(msg []byte)
	send func(msg []byte)
}

var _ conn.Bind = (*hookBind)(nil)

func (b *hookBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	fns, actual, err := b.Bind.Open(port)
	if err != nil {
		return nil, 0, err
	}
	wrapped := make([]conn.ReceiveFunc, len(fns))
	for i, fn := range fns {
		wrapped[i] = func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
			n, err := fn(bufs, sizes, eps)
			if b.recv != nil {
				for j := range n {
					b.recv(bufs[j][:sizes[j]])
				}
			}
			return n, err
		}
	}
	return wrapped, actual, nil
}

func (b *hookBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	if b.send != nil {
		for _, m := range bufs {
			b.send(m)
		}
	}
	return b.Bind.Send(bufs, ep)
}

// uapi formats wireguard-go configuration lines.
func uapi(kv ...string) string {
	var b strings.Builder
	for i := 0; i < len(kv); i += 2 {
		fmt.Fprintf(&b, "%s=%s\n", kv[i], kv[i+1])
	}
	return b.String()
}

// bindtest.NewChannelBinds' first bind sends to the second through the
// endpoint with port 1, the second to the first through port 2.
const (
	toSecondBind = "127.0.0.1:1"
	toFirstBind  = "127.0.0.1:2"
)

func newDevice(tb testing.TB, name string, b conn.Bind, self keyPair, peer [32]byte, peerIP netip.Addr, endpoint string) (*device.Device, *tuntest.ChannelTUN) {
	tb.Helper()
	tun := tuntest.NewChannelTUN()
	dev := device.NewDevice(tun.TUN(), b, device.NewLogger(device.LogLevelError, name+": "))
	err := dev.IpcSet(uapi(
		"private_key", hex.EncodeToString(self.priv[:]),
		"listen_port", "0",
		"replace_peers", "true",
		"public_key", hex.EncodeToString(peer[:]),
		"protocol_version", "1",
		"replace_allowed_ips", "true",
		"allowed_ip", peerIP.String()+"/32",
		"endpoint", endpoint,
	))
	if err != nil {
		dev.Close()
		tb.Fatalf("configure %s: %v", name, err)
	}
	if err := dev.Up(); err != nil {
		dev.Close()
		tb.Fatalf("bring up %s: %v", name, err)
	}
	tb.Cleanup(dev.Close)
	return dev, tun
}

var (
	clientIP = netip.MustParseAddr("10.0.0.1")
	serverIP = netip.MustParseAddr("10.0.0.2")
)

// pair is two stock wireguard-go devices connected in memory: a client and
// a server whose Binds are hooked.
type pair struct {
	client, server       *device.Device
	clientTUN, serverTUN *tuntest.ChannelTUN
	clientKey, serverKey keyPair
	serverInner          conn.Bind // the server's Bind under its hooks
}

func newPair(tb testing.TB, clientKey, serverKey keyPair, clientHooks, serverHooks *hookBind) *pair {
	tb.Helper()
	binds := bindtest.NewChannelBinds()
	clientHooks.Bind, serverHooks.Bind = binds[0], binds[1]
	p := &pair{clientKey: clientKey, serverKey: serverKey, serverInner: binds[1]}
	p.client, p.clientTUN = newDevice(tb, "client", clientHooks, clientKey, serverKey.pub, serverIP, toSecondBind)
	p.server, p.serverTUN = newDevice(tb, "server", serverHooks, serverKey, clientKey.pub, clientIP, toFirstBind)
	return p
}

// ping sends an ICMP echo through the tunnel and waits for it to come out
// of the other side.
func (p *pair) ping(tb testing.TB, fromClient bool) {
	tb.Helper()
	from, to := p.clientTUN, p.serverTUN
	src, dst := clientIP, serverIP
	if !fromClient {
		from, to, src, dst = to, from, dst, src
	}
	msg := tuntest.Ping(dst, src)
	select {
	case from.Outbound <- msg:
	case <-time.After(5 * time.Second):
		tb.Fatalf("ping %v -> %v: device did not read it", src, dst)
	}
	select {
	case got := <-to.Inbound:
		if !bytes.Equal(got, msg) {
			tb.Fatalf("ping %v -> %v: got %x, want %x", src, dst, got, msg)
		}
	case <-time.After(5 * time.Second):
		tb.Fatalf("ping %v -> %v: did not arrive", src, dst)
	}
}

// rekey makes one side start a new handshake now. wireguard-go sends at most
// one initiation per RekeyTimeout (5 s); ExpireCurrentKeypairs lifts that
// and retires the current keypair, so data waits for the new session.
func (p *pair) rekey(fromServer bool) {
	dev, peer := p.client, p.serverKey.pub
	if fromServer {
		dev, peer = p.server, p.clientKey.pub
	}
	pe := dev.LookupPeer(device.NoisePublicKey(peer))
	pe.ExpireCurrentKeypairs()
	pe.SendHandshakeInitiation(false)
}

// captureInitiations returns n handshake initiations that a stock
// wireguard-go device with key client sends to the service key.
func captureInitiations(tb testing.TB, client keyPair, service [32]byte, n int) [][]byte {
	tb.Helper()
	got := make(chan []byte, n)
	binds := bindtest.NewChannelBinds()
	hooks := &hookBind{Bind: binds[0], send: func(msg []byte) {
		if Classify(msg) == Initiation {
			select {
			case got <- bytes.Clone(msg):
			default: // a timer's retry: not asked for
			}
		}
	}}
	dev, _ := newDevice(tb, "client", hooks, client, service, serverIP, toSecondBind)
	pe := dev.LookupPeer(device.NoisePublicKey(service))
	out := make([][]byte, 0, n)
	for range n {
		pe.ExpireCurrentKeypairs()
		pe.SendHandshakeInitiation(false)
		select {
		case m := <-got:
			out = append(out, m)
		case <-time.After(5 * time.Second):
			tb.Fatal("the client device sent no initiation")
		}
	}
	dev.Close()
	return out
}
