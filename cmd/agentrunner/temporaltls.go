package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/pflag"
)

// temporalTLSFlags are TEMPORAL_TLS_CERT, TEMPORAL_TLS_KEY, TEMPORAL_TLS_CA and
// TEMPORAL_TLS_SERVER_NAME: TLS (with a CA) or mTLS (with a client pair) to the
// Temporal frontend. None set: plaintext, as the dev server wants.
type temporalTLSFlags struct {
	cert, key, ca, serverName string
}

func (f *temporalTLSFlags) bind(fs *pflag.FlagSet) {
	fs.StringVar(&f.cert, "temporal-tls-cert", "", "client certificate file (PEM) for mTLS to Temporal; re-read at each handshake so rotated files take effect")
	fs.StringVar(&f.key, "temporal-tls-key", "", "client private key file (PEM) matching --temporal-tls-cert")
	fs.StringVar(&f.ca, "temporal-tls-ca", "", "CA bundle file (PEM) that signs the Temporal frontend's certificate (default: the system roots)")
	fs.StringVar(&f.serverName, "temporal-tls-server-name", "", "server name to verify in the frontend's certificate (default: the host of --temporal-address)")
	envFlag(fs, "temporal-tls-cert", "TEMPORAL_TLS_CERT")
	envFlag(fs, "temporal-tls-key", "TEMPORAL_TLS_KEY")
	envFlag(fs, "temporal-tls-ca", "TEMPORAL_TLS_CA")
	envFlag(fs, "temporal-tls-server-name", "TEMPORAL_TLS_SERVER_NAME")
}

// config returns nil when no TLS setting is given, else the client TLS config.
// Files are checked now, so a wrong path fails at start, not at first dial.
func (f *temporalTLSFlags) config() (*tls.Config, error) {
	if f.cert == "" && f.key == "" && f.ca == "" && f.serverName == "" {
		return nil, nil
	}
	conf := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: f.serverName}
	if f.ca != "" {
		pem, err := os.ReadFile(f.ca)
		if err != nil {
			return nil, fmt.Errorf("--temporal-tls-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--temporal-tls-ca %s: no PEM certificate in it", f.ca)
		}
		conf.RootCAs = pool
	}
	switch {
	case f.cert == "" && f.key == "":
	case f.cert == "" || f.key == "":
		return nil, errors.New("--temporal-tls-cert and --temporal-tls-key go together")
	default:
		if _, err := tls.LoadX509KeyPair(f.cert, f.key); err != nil {
			return nil, fmt.Errorf("--temporal-tls-cert/--temporal-tls-key: %w", err)
		}
		cert, key := f.cert, f.key
		conf.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			c, err := tls.LoadX509KeyPair(cert, key)
			if err != nil {
				return nil, fmt.Errorf("temporal client certificate: %w", err)
			}
			return &c, nil
		}
	}
	return conf, nil
}
