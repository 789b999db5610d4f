package sim

import (
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"

	"buko.app/agentrunner/buko"
)

// maxFormField bounds one text field of a media upload (a 5000-character
// caption is at most 20,000 bytes of UTF-8).
const maxFormField = 64 << 10

func (s *Server) sendPhoto(c *call) (any, error) {
	return s.sendMedia(c, "photo", buko.MaxPhotoBytes)
}

func (s *Server) sendDocument(c *call) (any, error) {
	return s.sendMedia(c, "document", buko.MaxDocumentSize)
}

// upload is a parsed sendPhoto/sendDocument form.
type upload struct {
	fields   map[string]string
	data     []byte
	mimeType string
	fileName string
	found    bool
}

func tooLarge(field string, limit int64) *apiError {
	return &apiError{Status: http.StatusRequestEntityTooLarge, Code: buko.CodePayloadTooLarge,
		Message: fmt.Sprintf("%s is larger than %d bytes", field, limit)}
}

// readUpload reads the multipart form of a media method. Remote URL fields
// are refused (SSRF), the file part must be an uploaded file of at most limit
// bytes, unknown fields are skipped.
func readUpload(w http.ResponseWriter, r *http.Request, field string, limit int64) (*upload, *apiError) {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/form-data" {
		return nil, errBadRequest("%s needs a multipart/form-data body with the file in the %q part", methodOf(field), field)
	}
	r.Body = http.MaxBytesReader(w, r.Body, limit+(1<<20))
	mr, err := r.MultipartReader()
	if err != nil {
		return nil, errBadRequest("reading the form: %v", err)
	}
	up := &upload{fields: make(map[string]string)}
	for {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, formError(err, field, limit)
		}
		name := part.FormName()
		switch {
		case name == "url" || name == "file_url" || name == "photo_url" || name == "document_url":
			return nil, errBadRequest("field %s is not accepted: Buko takes uploaded bytes only, never remote URLs", name)
		case name == field:
			if up.found {
				return nil, errBadRequest("more than one %s part", field)
			}
			if part.FileName() == "" {
				return nil, errBadRequest("%s must be an uploaded file (a form part with a filename); remote URLs and file ids are not accepted", field)
			}
			data, err := io.ReadAll(io.LimitReader(part, limit+1))
			if err != nil {
				return nil, formError(err, field, limit)
			}
			if int64(len(data)) > limit {
				return nil, tooLarge(field, limit)
			}
			up.found, up.data = true, data
			up.mimeType = strings.TrimSpace(part.Header.Get("Content-Type"))
			up.fileName = part.FileName()
		case name == "chat_id" || name == "caption" || name == "reply_to_message_id":
			v, err := io.ReadAll(io.LimitReader(part, maxFormField+1))
			if err != nil {
				return nil, formError(err, field, limit)
			}
			if len(v) > maxFormField {
				return nil, errBadRequest("field %s is too long", name)
			}
			up.fields[name] = string(v)
		default:
			if _, err := io.Copy(io.Discard, part); err != nil {
				return nil, formError(err, field, limit)
			}
		}
	}
	if !up.found {
		return nil, errBadRequest("the %q file part is required", field)
	}
	if len(up.data) == 0 {
		return nil, errBadRequest("%s is empty", field)
	}
	return up, nil
}

func formError(err error, field string, limit int64) *apiError {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return tooLarge(field, limit)
	}
	return errBadRequest("reading the form: %v", err)
}

func methodOf(field string) string {
	if field == "photo" {
		return "sendPhoto"
	}
	return "sendDocument"
}

// sendMedia posts a photo or a document. A photo must be declared with an
// image/* type (the declared type is what counts; the bytes are not sniffed);
// a document keeps its declared type, or application/octet-stream.
func (s *Server) sendMedia(c *call, field string, limit int64) (any, error) {
	if aerr := s.takeQuota(c, msgQuota, c.lim.msgPerMin, c.lim.msgPerDay, "message"); aerr != nil {
		return nil, aerr
	}
	up, aerr := readUpload(c.w, c.r, field, limit)
	if aerr != nil {
		return nil, aerr
	}
	mimeType := "application/octet-stream"
	if up.mimeType != "" {
		mt, _, err := mime.ParseMediaType(up.mimeType)
		if err != nil {
			return nil, errBadRequest("%s has an invalid Content-Type %q", field, sanitize(up.mimeType, 60))
		}
		mimeType = mt
	}
	if field == "photo" && !strings.HasPrefix(mimeType, "image/") {
		return nil, errBadRequest("photo must carry an image MIME type, not %q; send other files with sendDocument", sanitize(mimeType, 60))
	}
	chatID := up.fields["chat_id"]
	if chatID == "" {
		return nil, errBadRequest("chat_id is required")
	}
	caption := up.fields["caption"]
	if aerr := checkText("caption", caption, false); aerr != nil {
		return nil, aerr
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	ch, aerr := s.chatForBotLocked(c.b, chatID)
	if aerr != nil {
		return nil, aerr
	}
	reply, aerr := replyTargetLocked(ch, up.fields["reply_to_message_id"])
	if aerr != nil {
		return nil, aerr
	}
	fileID := "media/" + ch.id + "/" + s.state.newID("")
	s.state.files[fileID] = &file{data: up.data, mime: mimeType, name: up.fileName}
	m := &message{caption: caption, replyTo: reply}
	size := int64(len(up.data))
	if field == "photo" {
		m.photo = []buko.PhotoSize{{FileID: fileID, MimeType: mimeType, FileSize: size}}
	} else {
		m.doc = &buko.Document{FileID: fileID, FileName: up.fileName, MimeType: mimeType, FileSize: size}
	}
	return s.postBotMessageLocked(c.b, ch, m), nil
}
