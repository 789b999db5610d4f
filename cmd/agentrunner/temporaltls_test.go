package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writePair writes a self-signed certificate and its key as PEM files.
func writePair(t *testing.T, dir, name string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, DNSNames: []string{name},
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func TestTemporalTLSConfig(t *testing.T) {
	dir := t.TempDir()
	caCert, _ := writePair(t, dir, "ca")
	cert, key := writePair(t, dir, "client")
	_, otherKey := writePair(t, dir, "other")

	if c, err := (&temporalTLSFlags{}).config(); c != nil || err != nil {
		t.Fatalf("no settings: want plaintext (nil, nil), got %v, %v", c, err)
	}
	c, err := (&temporalTLSFlags{ca: caCert, serverName: "temporal.example"}).config()
	if err != nil || c.RootCAs == nil || c.ServerName != "temporal.example" || c.GetClientCertificate != nil {
		t.Fatalf("CA only: %+v, %v", c, err)
	}
	c, err = (&temporalTLSFlags{cert: cert, key: key}).config()
	if err != nil || c.GetClientCertificate == nil {
		t.Fatalf("mTLS: %v", err)
	}
	got, err := c.GetClientCertificate(&tls.CertificateRequestInfo{})
	if err != nil || len(got.Certificate) != 1 {
		t.Fatalf("client certificate: %v", err)
	}
	for name, f := range map[string]temporalTLSFlags{
		"cert without key": {cert: cert},
		"mismatched pair":  {cert: cert, key: otherKey},
		"missing CA file":  {ca: filepath.Join(dir, "nope.pem")},
		"CA not PEM":       {ca: key + ".none"},
	} {
		if name == "CA not PEM" {
			if err := os.WriteFile(f.ca, []byte("not pem"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := f.config(); err == nil || !strings.Contains(err.Error(), "--temporal-tls") {
			t.Errorf("%s: want an error naming the flag, got %v", name, err)
		}
	}
}
