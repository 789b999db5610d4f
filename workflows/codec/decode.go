package codec

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"

	commonpb "go.temporal.io/api/common/v1"
)

// DecodeJSON reads any JSON document holding Temporal payloads in their
// protojson form ({"metadata":{"encoding":"<base64>",…},"data":"<base64>"}),
// such as `temporal workflow show --output json`, and writes it back with every
// encrypted payload opened. A decoded json/plain payload is shown as
// {"encoding":"json/plain","json":<value>}; others keep the protojson form.
// It is an operator's tool: its output holds user text.
func DecodeJSON(r io.Reader, w io.Writer, c *Codec) error {
	var doc any
	dec := json.NewDecoder(r)
	dec.UseNumber()
	if err := dec.Decode(&doc); err != nil {
		return fmt.Errorf("codec: read JSON: %w", err)
	}
	out, err := c.walk(doc)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

func (c *Codec) walk(v any) (any, error) {
	switch t := v.(type) {
	case map[string]any:
		if p, ok := asPayload(t); ok {
			dec, err := c.Decode([]*commonpb.Payload{p})
			if err != nil {
				return nil, err
			}
			return renderPayload(dec[0]), nil
		}
		for k, e := range t {
			d, err := c.walk(e)
			if err != nil {
				return nil, err
			}
			t[k] = d
		}
		return t, nil
	case []any:
		for i, e := range t {
			d, err := c.walk(e)
			if err != nil {
				return nil, err
			}
			t[i] = d
		}
		return t, nil
	}
	return v, nil
}

// asPayload recognises an encrypted payload object.
func asPayload(m map[string]any) (*commonpb.Payload, bool) {
	md, ok := m["metadata"].(map[string]any)
	if !ok {
		return nil, false
	}
	p := &commonpb.Payload{Metadata: map[string][]byte{}}
	for k, v := range md {
		s, ok := v.(string)
		if !ok {
			return nil, false
		}
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return nil, false
		}
		p.Metadata[k] = b
	}
	if string(p.Metadata[MetadataEncoding]) != EncodingEncrypted {
		return nil, false
	}
	if s, ok := m["data"].(string); ok {
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return nil, false
		}
		p.Data = b
	}
	return p, true
}

func renderPayload(p *commonpb.Payload) any {
	enc := string(p.GetMetadata()[MetadataEncoding])
	if enc == "json/plain" {
		var v any
		if err := json.Unmarshal(p.GetData(), &v); err == nil {
			return map[string]any{"encoding": enc, "json": v}
		}
	}
	md := map[string]any{}
	for k, v := range p.GetMetadata() {
		md[k] = base64.StdEncoding.EncodeToString(v)
	}
	return map[string]any{"metadata": md, "data": base64.StdEncoding.EncodeToString(p.GetData())}
}
