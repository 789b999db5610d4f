package buko

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"strings"
)

// sendMedia checks the upload locally, then streams a multipart/form-data
// body (fields chat_id, caption, reply_to_message_id, then the file part)
// with a known Content-Length and without copying Data.
func (c *Client) sendMedia(ctx context.Context, cred Credential, method, field string, p SendMediaParams) (*Message, error) {
	limit := int64(MaxDocumentSize)
	if field == "photo" {
		limit = MaxPhotoBytes
	}
	if n := int64(len(p.Data)); n > limit {
		return nil, &Error{Method: method, Code: CodePayloadTooLarge,
			Description: fmt.Sprintf("%s is %d bytes, over the %d-byte limit", field, n, limit)}
	}
	if len(p.Data) == 0 {
		return nil, &Error{Method: method, Code: CodeBadRequest, Description: field + " is empty"}
	}
	ctype, err := mediaType(field, p.MimeType, p.Data)
	if err != nil {
		return nil, &Error{Method: method, Code: CodeBadRequest, Description: err.Error()}
	}
	name := sanitizeFileName(p.FileName)
	if name == "" {
		name = field
	}

	var head bytes.Buffer
	mw := multipart.NewWriter(&head)
	fields := [][2]string{{"chat_id", p.ChatID}, {"caption", p.Caption}, {"reply_to_message_id", p.ReplyToMessageID}}
	for i, f := range fields {
		if f[1] == "" && i > 0 { // chat_id always goes, so the server can name what's missing
			continue
		}
		if err := mw.WriteField(f[0], f[1]); err != nil {
			return nil, &Error{Method: method, Code: CodeBadRequest, Description: "encoding form: " + err.Error()}
		}
	}
	h := textproto.MIMEHeader{}
	h.Set("Content-Disposition", multipart.FileContentDisposition(field, name))
	h.Set("Content-Type", ctype)
	if _, err := mw.CreatePart(h); err != nil {
		return nil, &Error{Method: method, Code: CodeBadRequest, Description: "encoding form: " + err.Error()}
	}
	headLen := head.Len()
	if err := mw.Close(); err != nil {
		return nil, &Error{Method: method, Code: CodeBadRequest, Description: "encoding form: " + err.Error()}
	}
	// mw.Close wrote the closing boundary ("\r\n--b--\r\n") after the still
	// empty file part; the data goes between.
	all := head.Bytes()
	prefix, tail := all[:headLen], all[headLen:]
	body := &sizedReader{
		r: io.MultiReader(bytes.NewReader(prefix), bytes.NewReader(p.Data), bytes.NewReader(tail)),
		n: int64(len(prefix) + len(p.Data) + len(tail)),
	}
	raw, err := c.do(ctx, cred, method, mw.FormDataContentType(), nil, body, UploadTimeout, MaxResponseBytes)
	if err != nil {
		return nil, err
	}
	if len(raw) == 0 {
		return nil, malformed(method, http.StatusOK, "ok:true without a result")
	}
	return messageResult(method, raw)
}

// mediaType returns the part's Content-Type: the declared one if valid (an
// image/* type for photos), else one sniffed from the bytes.
func mediaType(field, declared string, data []byte) (string, error) {
	ctype := strings.TrimSpace(declared)
	if ctype == "" {
		ctype = http.DetectContentType(data)
	}
	mt, params, err := mime.ParseMediaType(ctype)
	if err != nil {
		return "", fmt.Errorf("%s MIME type %q is not valid: %v", field, SanitizeText(ctype, 80), err)
	}
	if field == "photo" && !strings.HasPrefix(mt, "image/") {
		if declared == "" {
			return "", fmt.Errorf("photo bytes look like %s, not an image; send it as a document", mt)
		}
		return "", fmt.Errorf("photo MIME type %q is not an image type; send it as a document", SanitizeText(mt, 80))
	}
	return mime.FormatMediaType(mt, params), nil
}

// sanitizeFileName keeps the base name without path separators or control
// characters (which could otherwise break the part header).
func sanitizeFileName(name string) string {
	if i := strings.LastIndexAny(name, `/\`); i >= 0 {
		name = name[i+1:]
	}
	name = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == 0xFFFD {
			return -1
		}
		return r
	}, name)
	name = strings.TrimSpace(name)
	if len(name) > 255 {
		name = strings.ToValidUTF8(name[:255], "")
	}
	return name
}
