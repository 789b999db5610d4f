// Package codec owns the encryption of Temporal payloads: a
// converter.PayloadCodec that seals every payload (workflow inputs, signals,
// activity inputs and results, memos, failure messages) with AES-256-GCM under
// a key from a KeyProvider, bound to the workflow id where the SDK gives one,
// so user text never rests in Temporal in the clear and a worker never acts
// on a payload sealed without the key or for another workflow. It also
// decodes histories for operators (agentrunner codec decode).
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
	// MetadataWorkflowID names the workflow a format-2 payload is bound to:
	// its id is in the associated data of the AES-GCM seal, so the payload
	// opens only for that workflow. It is in the clear (it is the
	// workflow's id, which Temporal shows anyway) so operator tools that have
	// no workflow context (codec decode, codec serve) can still open it.
	MetadataWorkflowID = "encryption-workflow-id"
	KeySize            = 32                       // AES-256
	aadPrefix          = "agentrunner-payload:"   // format 1: + key id
	aadPrefixV2        = "agentrunner-payload:2:" // format 2: + key id + NUL + workflow id
)

// ErrUnknownKey is returned (wrapped) when a payload names a key the provider does not have.
var ErrUnknownKey = errors.New("codec: unknown payload key")

// ErrNotEncrypted is returned (wrapped) by the worker's codec for a payload
// this codec did not seal (plain JSON, binary, …): a signal or input injected
// without the key is refused, never handed to a workflow.
var ErrNotEncrypted = errors.New("codec: payload is not encrypted")

// ErrOtherWorkflow is returned (wrapped) when a payload sealed for one
// workflow is decoded for another.
var ErrOtherWorkflow = errors.New("codec: payload sealed for another workflow")

// KeyProvider supplies payload keys: the current one to seal new payloads and
// any older one, by id, to open what was sealed before a rotation.
type KeyProvider interface {
	EncryptionKey() (id string, key []byte, err error)
	DecryptionKey(id string) ([]byte, error)
}

// Codec is the AES-256-GCM payload codec.
//
// Given a serialization context by the SDK (WithSerializationContext: the
// workflow id of a workflow, signal, query, memo, continue-as-new or of an
// activity's workflow), it seals format 2, bound to that workflow id, and
// opens a format-2 payload only for the workflow it names. Without one it
// seals format 1 (unbound, as before) and opens a format-2 payload for the
// workflow its metadata names. Format-1 payloads (sealed before binding, in
// running histories) always open.
type Codec struct {
	keys KeyProvider
	// strict: the worker's and client's codec (DataConverter): refuse
	// payloads it did not seal. Operator tools (New) pass them through.
	strict     bool
	workflowID string // from the serialization context; "" unbound
}

var (
	_ converter.PayloadCodec                         = (*Codec)(nil)
	_ converter.PayloadCodecWithSerializationContext = (*Codec)(nil)
)

// New returns the operator's codec over keys (codec decode, codec serve):
// payloads that are not encrypted pass through unchanged.
func New(keys KeyProvider) *Codec { return &Codec{keys: keys} }

// NewStrict returns the codec of workers and clients: Decode refuses every
// payload it did not seal (ErrNotEncrypted).
func NewStrict(keys KeyProvider) *Codec { return &Codec{keys: keys, strict: true} }

// DataConverter wraps the SDK's default data converter with the strict
// codec: what it encodes is encrypted (bound to the workflow id where the SDK
// gives one), and it decodes nothing that is not.
func DataConverter(keys KeyProvider) converter.DataConverter {
	return converter.NewCodecDataConverter(converter.GetDefaultDataConverter(), NewStrict(keys))
}

// WithSerializationContext binds the codec to the workflow id of ctx (a
// workflow's, or an activity's workflow). Other contexts (Nexus, a standalone
// activity) leave it unbound.
func (c *Codec) WithSerializationContext(ctx converter.SerializationContext) converter.PayloadCodec {
	b := *c
	b.workflowID = ""
	switch t := ctx.(type) {
	case converter.WorkflowSerializationContext:
		b.workflowID = t.WorkflowID
	case *converter.WorkflowSerializationContext:
		if t != nil {
			b.workflowID = t.WorkflowID
		}
	case converter.ActivitySerializationContext:
		b.workflowID = t.WorkflowID
	case *converter.ActivitySerializationContext:
		if t != nil {
			b.workflowID = t.WorkflowID
		}
	}
	return &b
}

// FailureConverter moves failure messages and stack traces into an encoded
// payload, so the codec encrypts them too (they may quote user input). Given
// a serialization context it encodes with dc bound to that context, so
// failures are bound to their workflow like other payloads.
func FailureConverter(dc converter.DataConverter) converter.FailureConverter {
	return &failureConverter{dc: dc, FailureConverter: defaultFailureConverter(dc)}
}

func defaultFailureConverter(dc converter.DataConverter) converter.FailureConverter {
	return temporal.NewDefaultFailureConverter(temporal.DefaultFailureConverterOptions{
		DataConverter:          dc,
		EncodeCommonAttributes: true,
	})
}

type failureConverter struct {
	dc converter.DataConverter
	converter.FailureConverter
}

var _ converter.FailureConverterWithSerializationContext = (*failureConverter)(nil)

func (f *failureConverter) WithSerializationContext(ctx converter.SerializationContext) converter.FailureConverter {
	return defaultFailureConverter(converter.WithDataConverterSerializationContext(f.dc, ctx))
}

// Encode seals each payload: format 2 bound to the workflow id when the
// codec has one, else format 1.
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
		md := map[string][]byte{
			MetadataEncoding: []byte(EncodingEncrypted),
			MetadataKeyID:    []byte(id),
		}
		aad := aadPrefix + id
		if c.workflowID != "" {
			md[MetadataWorkflowID] = []byte(c.workflowID)
			aad = aadV2(id, c.workflowID)
		}
		out[i] = &commonpb.Payload{Metadata: md, Data: aead.Seal(nonce, nonce, plain, []byte(aad))}
	}
	return out, nil
}

func aadV2(keyID, workflowID string) string { return aadPrefixV2 + keyID + "\x00" + workflowID }

// Decode opens each encrypted payload. The strict codec refuses any other
// payload; the operator's passes it through unchanged. A format-2 payload
// opens only for the workflow it was sealed for: the codec's own workflow
// id if it has one, else the one its metadata names.
func (c *Codec) Decode(payloads []*commonpb.Payload) ([]*commonpb.Payload, error) {
	out := make([]*commonpb.Payload, len(payloads))
	aeads := map[string]cipher.AEAD{}
	for i, p := range payloads {
		if enc := string(p.GetMetadata()[MetadataEncoding]); enc != EncodingEncrypted {
			if c.strict {
				return nil, fmt.Errorf("%w: encoding %.40q; only payloads sealed with the payload keys are accepted", ErrNotEncrypted, enc)
			}
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
		aad := aadPrefix + id
		if wf, bound := p.GetMetadata()[MetadataWorkflowID]; bound {
			if c.workflowID != "" && string(wf) != c.workflowID {
				return nil, fmt.Errorf("%w: decoding for workflow %q", ErrOtherWorkflow, c.workflowID)
			}
			aad = aadV2(id, string(wf))
		}
		data := p.GetData()
		if len(data) < aead.NonceSize()+aead.Overhead() {
			return nil, errors.New("codec: encrypted payload too short")
		}
		plain, err := aead.Open(nil, data[:aead.NonceSize()], data[aead.NonceSize():], []byte(aad))
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
