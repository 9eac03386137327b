package gateway

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/segmentio/kafka-go/sasl/scram"
)

// KafkaTLSOptions configure TLS to the brokers (listeners with security
// protocol SSL or SASL_SSL).
type KafkaTLSOptions struct {
	// Enabled turns TLS on; default false (PLAINTEXT or SASL_PLAINTEXT).
	Enabled bool `yaml:"enabled"`
	// CAFile is a PEM file of the CA certificates that sign the brokers'
	// certificates; default the system roots.
	CAFile string `yaml:"ca_file"`
	// CertFile is a PEM client certificate for mutual TLS (ssl.client.auth
	// on the broker); set together with key_file.
	CertFile string `yaml:"cert_file"`
	// KeyFile is the PEM private key of cert_file.
	KeyFile string `yaml:"key_file"`
	// ServerName overrides the name checked in the brokers' certificates;
	// default the host of each broker address.
	ServerName string `yaml:"server_name"`
	// InsecureSkipVerify accepts any broker certificate. Test setups only:
	// it allows a man in the middle.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
}

// KafkaSASLOptions configure SASL authentication to the brokers.
type KafkaSASLOptions struct {
	// Mechanism is PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512; empty (the
	// default) means no SASL.
	Mechanism string `yaml:"mechanism"`
	// Username is the SASL user.
	Username string `yaml:"username"`
	// Password is the SASL password; prefer the environment
	// (IOTGW_KAFKA_SASL_PASSWORD) over the config file.
	Password string `yaml:"password"`
}

// SASL mechanism names as Kafka spells them.
const (
	SASLPlain       = "PLAIN"
	SASLScramSHA256 = "SCRAM-SHA-256"
	SASLScramSHA512 = "SCRAM-SHA-512"
)

func (o *KafkaSASLOptions) normalize() {
	o.Mechanism = strings.ToUpper(strings.TrimSpace(o.Mechanism))
	if o.Mechanism == "NONE" {
		o.Mechanism = ""
	}
}

// Validate reports the first invalid field by its config key.
func (o *KafkaSASLOptions) Validate() error {
	o.normalize()
	switch o.Mechanism {
	case "":
		return nil
	case SASLPlain, SASLScramSHA256, SASLScramSHA512:
	default:
		return fmt.Errorf("kafka.sasl.mechanism: %q is not PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", o.Mechanism)
	}
	if o.Username == "" {
		return fmt.Errorf("kafka.sasl.username: required with mechanism %s", o.Mechanism)
	}
	if o.Password == "" {
		return fmt.Errorf("kafka.sasl.password: required with mechanism %s (or IOTGW_KAFKA_SASL_PASSWORD)", o.Mechanism)
	}
	return nil
}

// mechanism builds the kafka-go SASL mechanism; nil without SASL.
func (o *KafkaSASLOptions) mechanism() (sasl.Mechanism, error) {
	o.normalize()
	switch o.Mechanism {
	case "":
		return nil, nil
	case SASLPlain:
		return plain.Mechanism{Username: o.Username, Password: o.Password}, nil
	case SASLScramSHA256:
		return scram.Mechanism(scram.SHA256, o.Username, o.Password)
	case SASLScramSHA512:
		return scram.Mechanism(scram.SHA512, o.Username, o.Password)
	}
	return nil, fmt.Errorf("kafka.sasl.mechanism: %q is not PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", o.Mechanism)
}

// Validate checks the files by loading them, so a wrong path or a key that
// does not match its certificate stops the gateway at start.
func (o *KafkaTLSOptions) Validate() error {
	if !o.Enabled {
		if o.CAFile != "" || o.CertFile != "" || o.KeyFile != "" {
			return errors.New("kafka.tls.enabled: ca_file, cert_file or key_file is set but TLS is not enabled")
		}
		return nil
	}
	_, err := o.config()
	return err
}

// config builds the client TLS configuration; nil when TLS is off.
func (o *KafkaTLSOptions) config() (*tls.Config, error) {
	if !o.Enabled {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: o.ServerName, InsecureSkipVerify: o.InsecureSkipVerify}
	if o.CAFile != "" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("kafka.tls.ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("kafka.tls.ca_file: %s holds no PEM certificate", o.CAFile)
		}
		cfg.RootCAs = pool
	}
	if (o.CertFile == "") != (o.KeyFile == "") {
		return nil, errors.New("kafka.tls.cert_file and kafka.tls.key_file: set both or neither")
	}
	if o.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("kafka.tls.cert_file/key_file: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// transport builds the kafka-go transport every gateway client of one
// cluster shares (producer, admin, downlink): one connection pool and one
// metadata cache.
func (o *KafkaOptions) transport() (*kafka.Transport, error) {
	tlsCfg, err := o.TLS.config()
	if err != nil {
		return nil, err
	}
	mech, err := o.SASL.mechanism()
	if err != nil {
		return nil, err
	}
	return &kafka.Transport{
		ClientID:    o.ClientID,
		DialTimeout: o.DialTimeout,
		IdleTimeout: 60 * time.Second,
		// The metadata cache is also how a topic created by someone else,
		// or a new partition leader, becomes visible: refreshed at random
		// within this bound. kafka-go does not refresh it when a produce
		// fails, so after a broker dies the writes keep going to it until
		// the refresh: this bound is most of the time a failover costs
		// (measured in docs/reliability.md), and a metadata request every
		// few seconds costs next to nothing.
		MetadataTTL: 3 * time.Second,
		TLS:         tlsCfg,
		SASL:        mech,
	}, nil
}

// dialer builds a kafka-go Dialer with the same security, for the few
// calls that need a connection of their own (uncached metadata, readers).
func (o *KafkaOptions) dialer() (*kafka.Dialer, error) {
	tlsCfg, err := o.TLS.config()
	if err != nil {
		return nil, err
	}
	mech, err := o.SASL.mechanism()
	if err != nil {
		return nil, err
	}
	return &kafka.Dialer{ClientID: o.ClientID, Timeout: o.DialTimeout, DualStack: true, TLS: tlsCfg, SASLMechanism: mech}, nil
}
