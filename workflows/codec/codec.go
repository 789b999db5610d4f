// Package codec owns the encryption of Temporal payloads: a
// converter.PayloadCodec that seals every payload (workflow inputs, signals,
// activity inputs and results, memos, failure messages) with AES-256-GCM under
// a key from a KeyProvider, so user text never rests in Temporal in the clear.
// It also decodes histories for operators (agentrunner codec decode).
package codec

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"

	commonpb "go.temporal.io/api/common/v1"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"
	"google.golang.org/protobuf/proto"
)

// Metadata of an encrypted payload.
const (
	EncodingEncrypted = "binary/encrypted"
	MetadataEncoding  = converter.MetadataEncoding // "encoding"
	MetadataKeyID     = "encryption-key-id"
	KeySize           = 32 // AES-256
	aadPrefix         = "agentrunner-payload:"
)

// ErrUnknownKey is returned (wrapped) when a payload names a key the provider does not have.
var ErrUnknownKey = errors.New("codec: unknown payload key")

// KeyProvider supplies payload keys: the current one to seal new payloads and
// any older one, by id, to open what was sealed before a rotation.
type KeyProvider interface {
	EncryptionKey() (id string, key []byte, err error)
	DecryptionKey(id string) ([]byte, error)
}

// Codec is the AES-256-GCM payload codec.
type Codec struct {
	keys KeyProvider
}

var _ converter.PayloadCodec = (*Codec)(nil)

// New returns a codec over keys.
func New(keys KeyProvider) *Codec { return &Codec{keys: keys} }

// DataConverter wraps the SDK's default data converter with the codec.
func DataConverter(keys KeyProvider) converter.DataConverter {
	return converter.NewCodecDataConverter(converter.GetDefaultDataConverter(), New(keys))
}

// FailureConverter moves failure messages and stack traces into an encoded
// payload, so the codec encrypts them too (they may quote user input).
func FailureConverter(dc converter.DataConverter) converter.FailureConverter {
	return temporal.NewDefaultFailureConverter(temporal.DefaultFailureConverterOptions{
		DataConverter:          dc,
		EncodeCommonAttributes: true,
	})
}

// Encode seals each payload.
func (c *Codec) Encode(payloads []*commonpb.Payload) ([]*commonpb.Payload, error) {
	id, key, err := c.keys.EncryptionKey()
	if err != nil {
		return nil, fmt.Errorf("codec: encryption key: %w", err)
	}
	aead, err := newAEAD(key)
	if err != nil {
		return nil, err
	}
	out := make([]*commonpb.Payload, len(payloads))
	for i, p := range payloads {
		plain, err := proto.Marshal(p)
		if err != nil {
			return nil, fmt.Errorf("codec: marshal payload: %w", err)
		}
		nonce := make([]byte, aead.NonceSize(), aead.NonceSize()+len(plain)+aead.Overhead())
		if _, err := rand.Read(nonce); err != nil {
			return nil, fmt.Errorf("codec: nonce: %w", err)
		}
		sealed := aead.Seal(nonce, nonce, plain, []byte(aadPrefix+id))
		out[i] = &commonpb.Payload{
			Metadata: map[string][]byte{
				MetadataEncoding: []byte(EncodingEncrypted),
				MetadataKeyID:    []byte(id),
			},
			Data: sealed,
		}
	}
	return out, nil
}

// Decode opens each encrypted payload; others pass through unchanged.
func (c *Codec) Decode(payloads []*commonpb.Payload) ([]*commonpb.Payload, error) {
	out := make([]*commonpb.Payload, len(payloads))
	aeads := map[string]cipher.AEAD{}
	for i, p := range payloads {
		if string(p.GetMetadata()[MetadataEncoding]) != EncodingEncrypted {
			out[i] = p
			continue
		}
		id := string(p.GetMetadata()[MetadataKeyID])
		aead, ok := aeads[id]
		if !ok {
			key, err := c.keys.DecryptionKey(id)
			if err != nil {
				return nil, fmt.Errorf("codec: key %q: %w", id, err)
			}
			if aead, err = newAEAD(key); err != nil {
				return nil, err
			}
			aeads[id] = aead
		}
		data := p.GetData()
		if len(data) < aead.NonceSize()+aead.Overhead() {
			return nil, errors.New("codec: encrypted payload too short")
		}
		plain, err := aead.Open(nil, data[:aead.NonceSize()], data[aead.NonceSize():], []byte(aadPrefix+id))
		if err != nil {
			return nil, fmt.Errorf("codec: payload does not open with key %q (tampered, or a different key of that id)", id)
		}
		var dec commonpb.Payload
		if err := proto.Unmarshal(plain, &dec); err != nil {
			return nil, fmt.Errorf("codec: decrypted payload: %w", err)
		}
		out[i] = &dec
	}
	return out, nil
}

func newAEAD(key []byte) (cipher.AEAD, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("codec: key is %d bytes, want %d", len(key), KeySize)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("codec: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("codec: %w", err)
	}
	return aead, nil
}
