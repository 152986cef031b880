package relay

import (
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"sync"
	"time"
)

// ServerName is the name in every node's relay certificate and the name
// the client checks: nodes are dialed by address, and what a certificate
// proves is "a node of this cluster", not which one.
const ServerName = "relay.wedge.internal"

// hkdfInfo separates the relay CA from any other use of the service key.
// Changing it changes every cluster's CA.
const hkdfInfo = "wedge relay CA v1"

// Leaf certificates live leafLifetime and are made anew after leafRenew,
// so a long-running node never presents an expired one.
const (
	leafLifetime = 7 * 24 * time.Hour
	leafRenew    = 24 * time.Hour
	leafBackdate = time.Hour // clock skew between nodes
)

// Credentials are a node's relay identity: the CA every node of the
// cluster derives from the shared service key, and this node's own leaf
// certificate, signed by it. Both the Server and the Client take theirs
// from one Credentials.
type Credentials struct {
	caKey  ed25519.PrivateKey
	caCert *x509.Certificate
	pool   *x509.CertPool
	node   string

	mu     sync.Mutex
	leaf   *tls.Certificate
	issued time.Time
	now    func() time.Time
}

// NewCredentials derives the cluster's relay CA from the service private
// key (32 bytes, the WireGuard key the cluster shares) and makes this
// node's leaf certificate; node names it in the certificate's subject,
// for logs.
func NewCredentials(serviceKey [32]byte, node string) (*Credentials, error) {
	if serviceKey == ([32]byte{}) {
		return nil, errors.New("relay: zero service key")
	}
	seed, err := hkdf.Key(sha256.New, serviceKey[:], nil, hkdfInfo, ed25519.SeedSize)
	if err != nil {
		return nil, err
	}
	caKey := ed25519.NewKeyFromSeed(seed)
	pub := caKey.Public().(ed25519.PublicKey)
	// Every field is fixed, and Ed25519 signatures are deterministic: every
	// node of a cluster makes the same CA certificate, byte for byte.
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "wedge relay CA"},
		NotBefore:             time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:              time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		SubjectKeyId:          keyID(pub),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, caKey)
	if err != nil {
		return nil, fmt.Errorf("relay: CA certificate: %w", err)
	}
	caCert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	c := &Credentials{caKey: caKey, caCert: caCert, pool: pool, node: node, now: time.Now}
	if _, err := c.certificate(); err != nil {
		return nil, err
	}
	return c, nil
}

func keyID(pub ed25519.PublicKey) []byte {
	s := sha256.Sum256(pub)
	return s[:20]
}

// certificate returns the current leaf, making a new one (fresh key) when
// it is older than leafRenew.
func (c *Credentials) certificate() (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	if c.leaf != nil && now.Sub(c.issued) < leafRenew {
		return c.leaf, nil
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:   serial,
		Subject:        pkix.Name{CommonName: c.node},
		DNSNames:       []string{ServerName},
		NotBefore:      now.Add(-leafBackdate),
		NotAfter:       now.Add(leafLifetime),
		KeyUsage:       x509.KeyUsageDigitalSignature,
		ExtKeyUsage:    []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		AuthorityKeyId: c.caCert.SubjectKeyId,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.caCert, pub, c.caKey)
	if err != nil {
		return nil, fmt.Errorf("relay: leaf certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	c.leaf = &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv, Leaf: leaf}
	c.issued = now
	return c.leaf, nil
}

// CAPublicKey is the cluster's relay CA key (the same on every node with
// the same service key).
func (c *Credentials) CAPublicKey() ed25519.PublicKey {
	return c.caKey.Public().(ed25519.PublicKey)
}

// ServerTLS is the listener's configuration: TLS 1.3 only, HTTP/2 (and
// HTTP/1.1 for a plain CONNECT), and a client certificate that chains to
// the cluster's CA is required.
func (c *Credentials) ServerTLS() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{"h2", "http/1.1"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return c.certificate()
		},
		ClientAuth: tls.RequireAndVerifyClientCert,
		ClientCAs:  c.pool,
	}
}

// ClientTLS is the dialing side's configuration: TLS 1.3, HTTP/2, this
// node's certificate, and the exit's must chain to the cluster's CA and
// name ServerName.
func (c *Credentials) ClientTLS() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{"h2"},
		ServerName: ServerName,
		RootCAs:    c.pool,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return c.certificate()
		},
	}
}
