package codec

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	commonpb "go.temporal.io/api/common/v1"
	"go.temporal.io/sdk/converter"
	"google.golang.org/protobuf/proto"
)

func keyring(t *testing.T, ids ...string) *Keyring {
	t.Helper()
	keys := map[string][]byte{}
	for _, id := range ids {
		k, err := GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		keys[id] = k
	}
	kr, err := NewKeyring(ids[len(ids)-1], keys)
	if err != nil {
		t.Fatal(err)
	}
	return kr
}

func TestRoundTripHidesPlaintext(t *testing.T) {
	secret := "my very private message to the bot"
	kr := keyring(t, "k1")
	dc := DataConverter(kr)
	p, err := dc.ToPayload(map[string]string{"text": secret})
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := proto.Marshal(p)
	if bytes.Contains(raw, []byte(secret)) || bytes.Contains(raw, []byte("private")) {
		t.Fatal("encoded payload holds the plaintext")
	}
	if string(p.Metadata[MetadataEncoding]) != EncodingEncrypted || string(p.Metadata[MetadataKeyID]) != "k1" {
		t.Fatalf("metadata %v", p.Metadata)
	}
	var back map[string]string
	if err := dc.FromPayload(p, &back); err != nil {
		t.Fatal(err)
	}
	if back["text"] != secret {
		t.Fatalf("round trip gave %q", back["text"])
	}
	// Without the codec the same value is in the clear: the check above means something.
	plain, _ := converter.GetDefaultDataConverter().ToPayload(map[string]string{"text": secret})
	if raw, _ := proto.Marshal(plain); !bytes.Contains(raw, []byte(secret)) {
		t.Fatal("control: the default converter should leave plaintext")
	}
}

func TestRotationDecryptsOldKeepsNew(t *testing.T) {
	old := keyring(t, "k1")
	p, err := New(old).Encode([]*commonpb.Payload{{Data: []byte("hello")}})
	if err != nil {
		t.Fatal(err)
	}
	k1, _ := old.DecryptionKey("k1")
	k2, _ := GenerateKey()
	rotated, err := NewKeyring("k2", map[string][]byte{"k1": k1, "k2": k2})
	if err != nil {
		t.Fatal(err)
	}
	out, err := New(rotated).Decode(p)
	if err != nil || string(out[0].Data) != "hello" {
		t.Fatalf("old payload after rotation: %v %q", err, out)
	}
	np, _ := New(rotated).Encode([]*commonpb.Payload{{Data: []byte("x")}})
	if string(np[0].Metadata[MetadataKeyID]) != "k2" {
		t.Fatal("new payloads must use the current key")
	}
}

func TestDecodeErrors(t *testing.T) {
	kr := keyring(t, "k1")
	c := New(kr)
	p, _ := c.Encode([]*commonpb.Payload{{Data: []byte("hello")}})
	// Unknown key.
	other := New(keyring(t, "zz"))
	if _, err := other.Decode(p); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("unknown key: %v", err)
	}
	// Tampering.
	bad := proto.Clone(p[0]).(*commonpb.Payload)
	bad.Data[len(bad.Data)-1] ^= 1
	if _, err := c.Decode([]*commonpb.Payload{bad}); err == nil {
		t.Fatal("tampered payload decoded")
	}
	// Truncated.
	short := proto.Clone(p[0]).(*commonpb.Payload)
	short.Data = short.Data[:5]
	if _, err := c.Decode([]*commonpb.Payload{short}); err == nil {
		t.Fatal("short payload decoded")
	}
	// Same key id, different key: refuses rather than returning garbage.
	impostor, _ := NewKeyring("k1", map[string][]byte{"k1": bytes.Repeat([]byte{7}, 32)})
	if _, err := New(impostor).Decode(p); err == nil {
		t.Fatal("decoded with the wrong key")
	}
	// Unencrypted payloads pass through.
	plain := &commonpb.Payload{Metadata: map[string][]byte{"encoding": []byte("json/plain")}, Data: []byte(`1`)}
	if out, err := c.Decode([]*commonpb.Payload{plain}); err != nil || out[0] != plain {
		t.Fatal("plain payload not passed through")
	}
}

func TestKeyringValidation(t *testing.T) {
	k, _ := GenerateKey()
	for name, tc := range map[string]struct {
		cur  string
		keys map[string][]byte
	}{
		"empty":      {"a", nil},
		"short key":  {"a", map[string][]byte{"a": k[:16]}},
		"bad id":     {"a b", map[string][]byte{"a b": k}},
		"no current": {"b", map[string][]byte{"a": k}},
	} {
		if _, err := NewKeyring(tc.cur, tc.keys); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

type fakeUnwrapper map[string][]byte

func (f fakeUnwrapper) Unwrap(_ context.Context, w string) ([]byte, error) {
	if k, ok := f[w]; ok {
		return k, nil
	}
	return nil, errors.New("cannot unwrap")
}

func TestKeyFile(t *testing.T) {
	k1, _ := GenerateKey()
	k2, _ := GenerateKey()
	dir := t.TempDir()
	path := filepath.Join(dir, "keys.json")
	kf := KeyFile{Current: "k2", Keys: map[string]string{"k1": RawPrefix + base64.StdEncoding.EncodeToString(k1), "k2": "local:v1:wrapped"}}
	data, _ := json.Marshal(kf)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadKeyFile(context.Background(), path, nil); err == nil || !strings.Contains(err.Error(), "wrapped") {
		t.Fatalf("wrapped key without an unwrapper: %v", err)
	}
	kr, err := LoadKeyFile(context.Background(), path, fakeUnwrapper{"local:v1:wrapped": k2})
	if err != nil {
		t.Fatal(err)
	}
	if id, key, _ := kr.EncryptionKey(); id != "k2" || !bytes.Equal(key, k2) {
		t.Fatal("current key wrong")
	}
	if _, err := ParseKeyFile([]byte(`{"current":"a","keys":{"a":"x"},"extra":1}`)); err == nil {
		t.Fatal("unknown field accepted")
	}
	if _, err := ParseKeyFile([]byte(`{}`)); err == nil {
		t.Fatal("empty key file accepted")
	}
}

func TestDecodeJSONOpensHistoryPayloads(t *testing.T) {
	kr := keyring(t, "k1")
	dc := DataConverter(kr)
	p, _ := dc.ToPayload(map[string]string{"text": "hi there"})
	// protojson form, as `temporal workflow show -o json` prints it.
	md := map[string]string{}
	for k, v := range p.Metadata {
		md[k] = base64.StdEncoding.EncodeToString(v)
	}
	doc := map[string]any{"events": []any{map[string]any{"input": map[string]any{"payloads": []any{
		map[string]any{"metadata": md, "data": base64.StdEncoding.EncodeToString(p.Data)},
	}}}}}
	in, _ := json.Marshal(doc)
	var out bytes.Buffer
	if err := DecodeJSON(bytes.NewReader(in), &out, New(kr)); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), `"text": "hi there"`) {
		t.Fatalf("decoded output:\n%s", out.String())
	}
	if err := DecodeJSON(strings.NewReader("{not json"), &out, New(kr)); err == nil {
		t.Fatal("garbage accepted")
	}
}

func FuzzDecode(f *testing.F) {
	kr, _ := NewKeyring("k1", map[string][]byte{"k1": bytes.Repeat([]byte{1}, 32)})
	c := New(kr)
	bound := NewStrict(kr).WithSerializationContext(converter.WorkflowSerializationContext{WorkflowID: "wf"})
	good, _ := c.Encode([]*commonpb.Payload{{Data: []byte("x")}})
	goodBound, _ := bound.Encode([]*commonpb.Payload{{Data: []byte("x")}})
	f.Add(good[0].Data, []byte("k1"), false, []byte(nil))
	f.Add([]byte{}, []byte("k1"), false, []byte(nil))
	f.Add(goodBound[0].Data, []byte("k1"), true, []byte("wf"))
	f.Fuzz(func(t *testing.T, data, id []byte, hasWF bool, wf []byte) {
		p := &commonpb.Payload{Metadata: map[string][]byte{MetadataEncoding: []byte(EncodingEncrypted), MetadataKeyID: id}, Data: data}
		if hasWF {
			p.Metadata[MetadataWorkflowID] = wf
		}
		_, _ = c.Decode([]*commonpb.Payload{p}) // never panics
		out, err := bound.Decode([]*commonpb.Payload{p})
		if err == nil && hasWF && string(wf) != "wf" {
			t.Fatalf("a payload bound to %q opened for workflow wf: %v", wf, out)
		}
	})
}
