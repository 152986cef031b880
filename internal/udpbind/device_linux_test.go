package udpbind

// Two wireguard-go devices over two Binds on loopback. The client's
// configured endpoint is 127.0.0.3, a "VIP" the server never bound
// explicitly; the server must answer from it.
//
//	client device             server device
//	tun 1.0.0.1               tun 1.0.0.2
//	Bind 0.0.0.0:c  ───────▶  Bind 0.0.0.0:s   (client sends to 127.0.0.3:s)
//	                ◀───────  reply from 127.0.0.3:s
//
// wireguard-go roams the client's peer endpoint to each authenticated
// reply's source, so the client's endpoint stays 127.0.0.3:s only if every
// reply came from there.

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/tuntest"
)

type wgKey struct{ priv, pub string } // hex

func newKey(t *testing.T) wgKey {
	t.Helper()
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return wgKey{hex.EncodeToString(k.Bytes()), hex.EncodeToString(k.PublicKey().Bytes())}
}

func newDevice(t *testing.T, name string, b *Bind, cfg string) (*device.Device, *tuntest.ChannelTUN) {
	t.Helper()
	tn := tuntest.NewChannelTUN()
	d := device.NewDevice(tn.TUN(), b, device.NewLogger(device.LogLevelError, name+": "))
	t.Cleanup(d.Close)
	if err := d.IpcSet(cfg); err != nil {
		t.Fatalf("%s: IpcSet: %v", name, err)
	}
	if err := d.Up(); err != nil {
		t.Fatalf("%s: Up: %v", name, err)
	}
	return d, tn
}

// ipcValue returns the first value of key in d's UAPI dump.
func ipcValue(t *testing.T, d *device.Device, key string) string {
	t.Helper()
	dump, err := d.IpcGet()
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(dump) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), key+"="); ok {
			return v
		}
	}
	return ""
}

func TestDevicesReplyFromVIP(t *testing.T) {
	goroutines := runtime.NumGoroutine()
	ck, sk := newKey(t), newKey(t)

	server, serverTUN := newDevice(t, "server", New(), fmt.Sprintf(
		"private_key=%s\nlisten_port=0\npublic_key=%s\nallowed_ip=1.0.0.1/32\n",
		sk.priv, ck.pub))
	serverPort := ipcValue(t, server, "listen_port")
	vip := "127.0.0.3:" + serverPort

	client, clientTUN := newDevice(t, "client", New(), fmt.Sprintf(
		"private_key=%s\nlisten_port=0\npublic_key=%s\nallowed_ip=1.0.0.2/32\nendpoint=%s\n",
		ck.priv, sk.pub, vip))

	transit := func(name string, from, to *tuntest.ChannelTUN, msg []byte) {
		t.Helper()
		from.Outbound <- msg
		select {
		case got := <-to.Inbound:
			if !bytes.Equal(got, msg) {
				t.Fatalf("%s: packet changed in transit", name)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: did not transit", name)
		}
	}
	ping := tuntest.Ping(mustAddr("1.0.0.2"), mustAddr("1.0.0.1"))
	pong := tuntest.Ping(mustAddr("1.0.0.1"), mustAddr("1.0.0.2"))
	transit("client→server", clientTUN, serverTUN, ping) // handshake + data
	transit("server→client", serverTUN, clientTUN, pong) // reply path
	transit("client→server again", clientTUN, serverTUN, ping)

	if got := ipcValue(t, client, "endpoint"); got != vip {
		t.Errorf("client's peer endpoint %q, want %q: server replied from elsewhere", got, vip)
	}
	clientPort := ipcValue(t, client, "listen_port")
	if got, want := ipcValue(t, server, "endpoint"), "127.0.0.1:"+clientPort; got != want {
		t.Errorf("server's peer endpoint %q, want %q", got, want)
	}

	client.Close()
	server.Close()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > goroutines && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if got := runtime.NumGoroutine(); got > goroutines {
		t.Errorf("%d goroutines after closing the devices, %d before", got, goroutines)
	}
}
