package relay

import (
	"crypto/x509"
	"testing"
	"time"
)

// TestLeafRenewal: a node's leaf chains to the derived CA, and a new one
// (fresh key) is made before the old one expires.
func TestLeafRenewal(t *testing.T) {
	c := creds(t, 7, "node-a")
	now := time.Now()
	c.now = func() time.Time { return now }
	leaf, err := c.certificate()
	if err != nil {
		t.Fatal(err)
	}
	verify := func(l *x509.Certificate, at time.Time) error {
		_, err := l.Verify(x509.VerifyOptions{Roots: c.pool, DNSName: ServerName, CurrentTime: at,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}})
		return err
	}
	if err := verify(leaf.Leaf, now); err != nil {
		t.Fatalf("leaf does not verify: %v", err)
	}
	if leaf.Leaf.Subject.CommonName != "node-a" {
		t.Errorf("leaf names %q", leaf.Leaf.Subject.CommonName)
	}
	if other := creds(t, 8, "b"); verify(leaf.Leaf, now) == nil {
		if _, err := leaf.Leaf.Verify(x509.VerifyOptions{Roots: other.pool, DNSName: ServerName, CurrentTime: now}); err == nil {
			t.Error("a leaf verifies against another service key's CA")
		}
	}
	now = now.Add(leafRenew - time.Minute)
	if same, _ := c.certificate(); same != leaf {
		t.Error("leaf renewed early")
	}
	now = now.Add(2 * time.Minute)
	renewed, _ := c.certificate()
	if renewed == leaf || renewed.Leaf.PublicKey == nil {
		t.Fatal("leaf not renewed after a day")
	}
	// The old one is still valid meanwhile; the new one long after.
	if verify(leaf.Leaf, now) != nil || verify(renewed.Leaf, now.Add(leafLifetime-leafRenew)) != nil {
		t.Error("leaf lifetimes do not overlap the renewal")
	}
}
