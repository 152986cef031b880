package server

// The public API's TLS certificate: the operator's (--tls-cert/--tls-key)
// or a self-signed one made on first start and kept in the state
// directory. Clients pin a self-signed certificate by its SHA-256
// fingerprint (wedge register --fingerprint).

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net/netip"
	"os"
	"time"
)

// Fingerprint is the SHA-256 of a certificate's DER bytes, in lower-case
// hex: what `wedge register --fingerprint` pins.
func Fingerprint(der []byte) string {
	h := sha256.Sum256(der)
	return hex.EncodeToString(h[:])
}

// CertFingerprint returns the fingerprint of the first certificate in
// the PEM file at path.
func CertFingerprint(path string) (string, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	for {
		var b *pem.Block
		b, raw = pem.Decode(raw)
		if b == nil {
			return "", fmt.Errorf("%s: no PEM certificate", path)
		}
		if b.Type == "CERTIFICATE" {
			return Fingerprint(b.Bytes), nil
		}
	}
}

// LoadCert loads a PEM certificate (chain) and key, as --tls-cert and
// --tls-key give them, and returns it with its leaf's fingerprint.
func LoadCert(certPath, keyPath string) (tls.Certificate, string, error) {
	c, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		return tls.Certificate{}, "", fmt.Errorf("tls certificate: %w", err)
	}
	return c, Fingerprint(c.Certificate[0]), nil
}

// LoadOrCreateCert loads the self-signed certificate at certPath and
// keyPath, first making one if neither file exists: ECDSA P-256, valid
// for 10 years, for the names and addresses in hosts (clients that pin
// its fingerprint do not check them). The key file is mode 0600. created
// says whether it was made now.
func LoadOrCreateCert(certPath, keyPath string, hosts []string) (c tls.Certificate, fp string, created bool, err error) {
	_, cerr := os.Stat(certPath)
	_, kerr := os.Stat(keyPath)
	switch {
	case cerr == nil && kerr == nil:
		c, fp, err = LoadCert(certPath, keyPath)
		return c, fp, false, err
	case errors.Is(cerr, fs.ErrNotExist) && errors.Is(kerr, fs.ErrNotExist):
	case cerr != nil && !errors.Is(cerr, fs.ErrNotExist):
		return tls.Certificate{}, "", false, cerr
	case kerr != nil && !errors.Is(kerr, fs.ErrNotExist):
		return tls.Certificate{}, "", false, kerr
	default:
		return tls.Certificate{}, "", false, fmt.Errorf("tls certificate: only one of %s and %s exists; remove the other to make a new pair", certPath, keyPath)
	}
	certPEM, keyPEM, err := selfSigned(hosts, time.Now())
	if err != nil {
		return tls.Certificate{}, "", false, err
	}
	if err := writeNew(keyPath, keyPEM, 0o600); err != nil {
		return tls.Certificate{}, "", false, err
	}
	if err := writeNew(certPath, certPEM, 0o644); err != nil {
		os.Remove(keyPath)
		return tls.Certificate{}, "", false, err
	}
	c, fp, err = LoadCert(certPath, keyPath)
	return c, fp, err == nil, err
}

// writeNew writes a file that must not exist yet, synced.
func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("tls certificate: %w", err)
	}
	_, werr := f.Write(data)
	if err := errors.Join(werr, f.Sync(), f.Close()); err != nil {
		os.Remove(path)
		return fmt.Errorf("tls certificate: write %s: %w", path, err)
	}
	return nil
}

// selfSigned makes a self-signed server certificate and its key (PEM).
func selfSigned(hosts []string, now time.Time) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "wedge node (self-signed)"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	for _, h := range hosts {
		if a, err := netip.ParseAddr(h); err == nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, a.AsSlice())
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), nil
}

// TLSConfig is the public API's TLS configuration for cert: TLS 1.2 or
// later.
func TLSConfig(cert tls.Certificate) *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
}
