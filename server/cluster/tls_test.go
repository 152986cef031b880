package cluster

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wedge-edge/wedge/internal/etcdtest"
)

// testCA is a certificate authority made up for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	file string // the CA certificate, PEM
}

var serial int64

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func newCA(t *testing.T, dir, name string) *testCA {
	t.Helper()
	key := newKey(t)
	serial++
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	ca := &testCA{cert: cert, key: key, file: filepath.Join(dir, name+".pem")}
	writePEM(t, ca.file, "CERTIFICATE", der)
	return ca
}

// issue signs a leaf certificate and writes it and its key as
// dir/name.pem and dir/name-key.pem.
func (ca *testCA) issue(t *testing.T, dir, name string, usage []x509.ExtKeyUsage, ips ...net.IP) (certFile, keyFile string) {
	t.Helper()
	key := newKey(t)
	serial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  usage,
		IPAddresses:  ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
	writePEM(t, certFile, "CERTIFICATE", der)
	writePEM(t, keyFile, "PRIVATE KEY", keyDER)
	return certFile, keyFile
}

// roundTrip puts a key and reads it back through cli, bounded by timeout.
func roundTrip(cli *clientv3.Client, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if _, err := cli.Put(ctx, "/tls-test/k", "v"); err != nil {
		return err
	}
	r, err := cli.Get(ctx, "/tls-test/k")
	if err != nil {
		return err
	}
	if len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "v" {
		return errors.New("get after put: wrong answer")
	}
	return nil
}

func dial(t *testing.T, c Config) *clientv3.Client {
	t.Helper()
	cli, err := c.Dial()
	if err != nil {
		t.Fatalf("Dial(%+v): %v", c, err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// TestDialTLS runs etcd with https and client certificate auth and checks
// that Dial's TLS options reach it, and that a client missing any part of
// the TLS setup gets nothing from it.
func TestDialTLS(t *testing.T) {
	dir := t.TempDir()
	ca := newCA(t, dir, "ca")
	serverCert, serverKey := ca.issue(t, dir, "server",
		[]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, net.IPv4(127, 0, 0, 1))
	clientCert, clientKey := ca.issue(t, dir, "client", []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth})
	otherCA := newCA(t, dir, "other-ca")
	otherCert, otherKey := otherCA.issue(t, dir, "other-client", []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth})

	e := etcdtest.StartWith(t, etcdtest.Options{TLS: &etcdtest.TLSFiles{
		CertFile: serverCert, KeyFile: serverKey, CAFile: ca.file,
		ClientCertAuth: true, ClientCertFile: clientCert, ClientKeyFile: clientKey,
	}})
	https := "https://" + e.Endpoint

	good := Config{CAFile: ca.file, CertFile: clientCert, KeyFile: clientKey}
	if diag := Diagnose(https, good); diag != "" {
		t.Fatalf("Diagnose with the right files: %q, want nothing wrong", diag)
	}
	for _, ep := range []string{https, e.Endpoint} {
		t.Run("ok "+ep, func(t *testing.T) {
			cli := dial(t, Config{Endpoints: []string{ep}, CAFile: ca.file, CertFile: clientCert, KeyFile: clientKey})
			if err := roundTrip(cli, 5*time.Second); err != nil {
				t.Fatal(err)
			}
		})
	}

	// Each of these must fail. Dial itself does not reach etcd, so the
	// failure shows at the first request; the client waits for a usable
	// connection, so that request ends at its deadline, and its error
	// says no more than that. So each case also asks Diagnose, which shakes
	// hands itself with the tls.Config Dial makes and must name the
	// failure meant: reason is what it must say (alternatives split by |;
	// "": Dial itself must refuse the settings).
	bad := []struct {
		name, reason string
		c            Config
	}{
		// etcd 3.4 (Go 1.19) answers a missing certificate with
		// bad_certificate, a newer Go with certificate_required.
		{"no client certificate", "bad certificate|certificate required", Config{Endpoints: []string{https}, CAFile: ca.file}},
		{"client certificate of another CA", "bad certificate", Config{Endpoints: []string{https}, CAFile: ca.file, CertFile: otherCert, KeyFile: otherKey}},
		{"wrong CA", "unknown authority", Config{Endpoints: []string{https}, CAFile: otherCA.file, CertFile: clientCert, KeyFile: clientKey}},
		{"system roots", "unknown authority", Config{Endpoints: []string{https}, CertFile: clientCert, KeyFile: clientKey}},
		// The etcd client drops TLS for an http:// endpoint whatever TLS
		// files are set, so Dial refuses the combination.
		{"http endpoint", "", Config{Endpoints: []string{"http://" + e.Endpoint}, CAFile: ca.file, CertFile: clientCert, KeyFile: clientKey}},
		{"http and https mixed", "", Config{Endpoints: []string{https, "http://" + e.Endpoint}}},
	}
	for _, b := range bad {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			if b.reason == "" {
				cli, err := b.c.Dial()
				if err == nil {
					cli.Close()
					t.Fatal("Dial accepted the settings")
				}
				if !errors.Is(err, ErrConfig) {
					t.Fatalf("Dial: %v, want ErrConfig", err)
				}
				return
			}
			diag := Diagnose(b.c.Endpoints[0], b.c)
			if !slices.ContainsFunc(strings.Split(b.reason, "|"), func(r string) bool {
				return diag != "" && strings.Contains(diag, r)
			}) {
				t.Errorf("Diagnose: %q, want %q", diag, b.reason)
			}
			cli, err := b.c.Dial()
			if err != nil {
				t.Logf("Dial fails: %v", err)
				return
			}
			defer cli.Close()
			start := time.Now()
			err = roundTrip(cli, time.Second)
			if err == nil {
				t.Fatal("put/get worked")
			}
			t.Logf("fails after %v: %v", time.Since(start).Round(time.Millisecond), err)
		})
	}
}

// TestDialAuth runs etcd with auth enabled and checks Dial's Username and
// PasswordFile.
func TestDialAuth(t *testing.T) {
	e := etcdtest.Start(t)
	const pw = "s3cret pass"
	admin := e.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := admin.UserAdd(ctx, "root", pw); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.UserGrantRole(ctx, "root", "root"); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.AuthEnable(ctx); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	pwFile := filepath.Join(dir, "pw")
	if err := os.WriteFile(pwFile, []byte(pw+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	wrongFile := filepath.Join(dir, "wrong")
	if err := os.WriteFile(wrongFile, []byte("not "+pw+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	t.Run("password file", func(t *testing.T) {
		cli := dial(t, Config{Endpoints: []string{e.URL}, Username: "root", PasswordFile: pwFile, DialTimeout: 5 * time.Second})
		if err := roundTrip(cli, 5*time.Second); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("no credentials", func(t *testing.T) {
		cli := dial(t, Config{Endpoints: []string{e.URL}})
		err := roundTrip(cli, 5*time.Second)
		if !errors.Is(err, rpctypes.ErrUserEmpty) {
			t.Fatalf("put without credentials: %v, want %v", err, rpctypes.ErrUserEmpty)
		}
	})
	t.Run("wrong password", func(t *testing.T) {
		// The etcd client authenticates inside Dial (clientv3.New), so a
		// wrong password fails Dial itself.
		cli, err := Config{Endpoints: []string{e.URL}, Username: "root", PasswordFile: wrongFile, DialTimeout: 5 * time.Second}.Dial()
		if err == nil {
			defer cli.Close()
			err = roundTrip(cli, 5*time.Second)
		}
		if !errors.Is(err, rpctypes.ErrAuthFailed) {
			t.Fatalf("wrong password: %v, want %v", err, rpctypes.ErrAuthFailed)
		}
	})
}
