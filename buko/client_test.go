package buko_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"buko.app/agentrunner/buko"
)

// testToken is what every test credential reveals; no error may contain it.
const testToken = "bot_TESTSECRET_5f0c2e9a7d"

type cred string

func (c cred) Reveal() string { return string(c) }

// recorded is one request as the test server saw it.
type recorded struct {
	Method, Path, Auth, ContentType string
	Body                            []byte
	Form                            map[string]string
	Files                           map[string]recordedFile
}

type recordedFile struct {
	Name, ContentType string
	Data              []byte
}

// apiServer is an httptest server that records requests and answers with reply.
type apiServer struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []recorded
}

func newAPIServer(t testing.TB, reply http.HandlerFunc) *apiServer {
	t.Helper()
	s := &apiServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := recorded{Method: r.Method, Path: r.URL.Path, Auth: r.Header.Get("Authorization"), ContentType: r.Header.Get("Content-Type")}
		if strings.HasPrefix(rec.ContentType, "multipart/form-data") {
			if err := r.ParseMultipartForm(64 << 20); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			rec.Form = map[string]string{}
			for k, v := range r.MultipartForm.Value {
				rec.Form[k] = v[0]
			}
			rec.Files = map[string]recordedFile{}
			for k, fhs := range r.MultipartForm.File {
				f, err := fhs[0].Open()
				if err != nil {
					http.Error(w, err.Error(), http.StatusBadRequest)
					return
				}
				data, _ := io.ReadAll(f)
				f.Close()
				rec.Files[k] = recordedFile{Name: fhs[0].Filename, ContentType: fhs[0].Header.Get("Content-Type"), Data: data}
			}
			r.MultipartForm.RemoveAll()
		} else {
			rec.Body, _ = io.ReadAll(r.Body)
		}
		s.mu.Lock()
		s.reqs = append(s.reqs, rec)
		s.mu.Unlock()
		reply(w, r)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *apiServer) requests() []recorded {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]recorded(nil), s.reqs...)
}

func (s *apiServer) last(t *testing.T) recorded {
	t.Helper()
	r := s.requests()
	if len(r) == 0 {
		t.Fatal("server saw no request")
	}
	return r[len(r)-1]
}

func (s *apiServer) client() *buko.Client { return buko.NewClient(s.URL, nil) }

func reply(status int, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		io.WriteString(w, body)
	}
}

func ok(result string) http.HandlerFunc { return reply(200, `{"ok":true,"result":`+result+`}`) }

// noToken fails the test if err's text (or any wrapped error's) holds the token.
func noToken(t *testing.T, err error) {
	t.Helper()
	for e := err; e != nil; e = errors.Unwrap(e) {
		if strings.Contains(e.Error(), testToken) || strings.Contains(fmt.Sprintf("%+v %#v", e, e), testToken) {
			t.Fatalf("error leaks the token: %v", e)
		}
	}
}

func apiErr(t *testing.T, err error) *buko.Error {
	t.Helper()
	if err == nil {
		t.Fatal("want an error, got nil")
	}
	noToken(t, err)
	var e *buko.Error
	if !errors.As(err, &e) {
		t.Fatalf("want *buko.Error, got %T: %v", err, err)
	}
	return e
}

func jsonBody(t *testing.T, r recorded) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.Body, &m); err != nil {
		t.Fatalf("request body %q is not a JSON object: %v", r.Body, err)
	}
	return m
}

func checkCommon(t *testing.T, r recorded, method, ctype string) {
	t.Helper()
	if r.Method != http.MethodPost || r.Path != "/bot/"+method {
		t.Fatalf("request = %s %s, want POST /bot/%s", r.Method, r.Path, method)
	}
	if r.Auth != "Bot "+testToken {
		t.Fatalf("Authorization header wrong (len %d)", len(r.Auth))
	}
	if !strings.HasPrefix(r.ContentType, ctype) {
		t.Fatalf("Content-Type = %q, want %s", r.ContentType, ctype)
	}
}

func TestURLsAndHeader(t *testing.T) {
	for _, tc := range []struct{ base, wantBase, wantGW string }{
		{"", "https://ims.buko.app", "wss://ims.buko.app/bot/ws"},
		{"https://ims.buko.app/", "https://ims.buko.app", "wss://ims.buko.app/bot/ws"},
		{"http://127.0.0.1:8081", "http://127.0.0.1:8081", "ws://127.0.0.1:8081/bot/ws"},
		{"http://host/prefix/", "http://host/prefix", "ws://host/prefix/bot/ws"},
	} {
		c := buko.NewClient(tc.base, nil)
		if c.BaseURL() != tc.wantBase || c.GatewayURL() != tc.wantGW {
			t.Errorf("NewClient(%q): base %q gw %q; want %q %q", tc.base, c.BaseURL(), c.GatewayURL(), tc.wantBase, tc.wantGW)
		}
	}
	if got := buko.AuthHeader(cred(testToken)).Get("Authorization"); got != "Bot "+testToken {
		t.Errorf("AuthHeader wrong")
	}
	if len(buko.AuthHeader(nil)) != 0 {
		t.Errorf("AuthHeader(nil) not empty")
	}
}

const msgResult = `{"message_id":"43","chat":{"id":"spc_abc123","type":"private"},"date":1783000000,"text":"Got it.","future_field":{"x":1}}`

func TestGetMe(t *testing.T) {
	s := newAPIServer(t, ok(`{"id":"bot_01J","is_bot":true,"display_name":"Buko AI","handle":"buko_ai","avatar_key":null,
		"status":"active","verified":true,"official":true,"quota_tier":"official","gateway_connection_limit":1,
		"capabilities":{"edit_delete_messages":true},"unknown":[1,2]}`))
	me, err := s.client().GetMe(context.Background(), cred(testToken))
	if err != nil {
		t.Fatal(err)
	}
	if me.ID != "bot_01J" || !me.IsBot || me.Handle != "buko_ai" || me.AvatarKey != nil || me.QuotaTier != "official" ||
		me.GatewayConnectionLimit != 1 || !me.Capabilities.EditDeleteMessages {
		t.Fatalf("GetMe = %+v", me)
	}
	r := s.last(t)
	checkCommon(t, r, "getMe", "application/json")
	if string(r.Body) != "{}" {
		t.Fatalf("getMe body = %q, want {}", r.Body)
	}
}

func TestSendMessage(t *testing.T) {
	s := newAPIServer(t, ok(msgResult))
	m, err := s.client().SendMessage(context.Background(), cred(testToken), buko.SendMessageParams{
		ChatID: "spc_abc123", Text: "Hello", ReplyToMessageID: "42", ParseMode: buko.ParseModePlain})
	if err != nil {
		t.Fatal(err)
	}
	if m.MessageID != "43" || m.Chat.ID != "spc_abc123" || m.Text != "Got it." || m.Date != 1783000000 {
		t.Fatalf("SendMessage = %+v", m)
	}
	r := s.last(t)
	checkCommon(t, r, "sendMessage", "application/json")
	b := jsonBody(t, r)
	want := map[string]any{"chat_id": "spc_abc123", "text": "Hello", "reply_to_message_id": "42", "parse_mode": "plain"}
	if fmt.Sprint(b) != fmt.Sprint(want) {
		t.Fatalf("body = %v, want %v", b, want)
	}

	// Optional fields are omitted; required ones are always sent, even empty.
	if _, err := s.client().SendMessage(context.Background(), cred(testToken), buko.SendMessageParams{ChatID: "c"}); err != nil {
		t.Fatal(err)
	}
	b = jsonBody(t, s.last(t))
	if _, has := b["reply_to_message_id"]; has || fmt.Sprint(b) != fmt.Sprint(map[string]any{"chat_id": "c", "text": ""}) {
		t.Fatalf("minimal body = %v", b)
	}
}

func TestSendChatAction(t *testing.T) {
	for _, res := range []string{`true`, `null`, `{"anything":1}`} {
		s := newAPIServer(t, ok(res))
		if err := s.client().SendChatAction(context.Background(), cred(testToken), "spc_1", buko.ActionTyping); err != nil {
			t.Fatalf("result %s: %v", res, err)
		}
		r := s.last(t)
		checkCommon(t, r, "sendChatAction", "application/json")
		if b := jsonBody(t, r); b["chat_id"] != "spc_1" || b["action"] != "typing" || len(b) != 2 {
			t.Fatalf("body = %v", b)
		}
	}
	// ok:true with no result at all is success for a boolean method.
	s := newAPIServer(t, reply(200, `{"ok":true}`))
	if err := s.client().SendChatAction(context.Background(), cred(testToken), "c", "typing"); err != nil {
		t.Fatal(err)
	}
	// result false is not.
	s = newAPIServer(t, ok(`false`))
	e := apiErr(t, s.client().SendChatAction(context.Background(), cred(testToken), "c", "typing"))
	if !e.Malformed() || e.Status != 200 {
		t.Fatalf("result false: %+v", e)
	}
}

func TestEditMessageText(t *testing.T) {
	s := newAPIServer(t, ok(`{"message_id":"43","chat":{"id":"c","type":"private"},"text":"new","edit_date":5}`))
	p := buko.EditMessageTextParams{ChatID: "c", MessageID: "43", Text: "new", ParseMode: "plain"}
	m, err := s.client().EditMessageText(context.Background(), cred(testToken), p)
	if err != nil {
		t.Fatal(err)
	}
	if m.MessageID != "43" || m.Text != "new" || m.EditDate != 5 {
		t.Fatalf("EditMessageText = %+v", m)
	}
	r := s.last(t)
	checkCommon(t, r, "editMessageText", "application/json")
	if b := jsonBody(t, r); fmt.Sprint(b) != fmt.Sprint(map[string]any{"chat_id": "c", "message_id": "43", "text": "new", "parse_mode": "plain"}) {
		t.Fatalf("body = %v", b)
	}
	// A server answering true gets the message as requested.
	s = newAPIServer(t, ok(`true`))
	m, err = s.client().EditMessageText(context.Background(), cred(testToken), p)
	if err != nil || m.MessageID != "43" || m.Chat.ID != "c" || m.Text != "new" {
		t.Fatalf("true result: %+v, %v", m, err)
	}
}

func TestDeleteMessage(t *testing.T) {
	s := newAPIServer(t, ok(`true`))
	if err := s.client().DeleteMessage(context.Background(), cred(testToken), "c", "43"); err != nil {
		t.Fatal(err)
	}
	r := s.last(t)
	checkCommon(t, r, "deleteMessage", "application/json")
	if b := jsonBody(t, r); fmt.Sprint(b) != fmt.Sprint(map[string]any{"chat_id": "c", "message_id": "43"}) {
		t.Fatalf("body = %v", b)
	}
}

// pngBytes is a real 1×1 PNG.
var pngBytes = []byte("\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89" +
	"\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N\x00\x00\x00\x00IEND\xaeB`\x82")

func TestSendPhoto(t *testing.T) {
	s := newAPIServer(t, ok(`{"message_id":"44","chat":{"id":"spc_abc123","type":"private"},"date":1783000000,"caption":"Here is the chart.",
		"photo":[{"file_id":"media/spc_abc123/x","mime_type":"image/png","file_size":12345}]}`))
	m, err := s.client().SendPhoto(context.Background(), cred(testToken), buko.SendMediaParams{
		ChatID: "spc_abc123", Caption: "Here is the chart.", ReplyToMessageID: "42", FileName: "../../chart \"1\".png", Data: pngBytes})
	if err != nil {
		t.Fatal(err)
	}
	if m.MessageID != "44" || len(m.Photo) != 1 || m.Photo[0].FileSize != 12345 || m.Caption != "Here is the chart." {
		t.Fatalf("SendPhoto = %+v", m)
	}
	r := s.last(t)
	checkCommon(t, r, "sendPhoto", "multipart/form-data")
	if fmt.Sprint(r.Form) != fmt.Sprint(map[string]string{"chat_id": "spc_abc123", "caption": "Here is the chart.", "reply_to_message_id": "42"}) {
		t.Fatalf("form = %v", r.Form)
	}
	f, has := r.Files["photo"]
	if !has || len(r.Files) != 1 {
		t.Fatalf("files = %v", r.Files)
	}
	if f.ContentType != "image/png" || !bytes.Equal(f.Data, pngBytes) || f.Name != `chart "1".png` {
		t.Fatalf("file part: name %q type %q, %d bytes", f.Name, f.ContentType, len(f.Data))
	}
}

func TestSendDocument(t *testing.T) {
	s := newAPIServer(t, ok(`{"message_id":"45","chat":{"id":"c","type":"group","title":"T"},"document":{"file_id":"media/c/y","file_name":"report.pdf","mime_type":"application/pdf","file_size":7}}`))
	data := []byte("%PDF-1.4 tiny")
	m, err := s.client().SendDocument(context.Background(), cred(testToken), buko.SendMediaParams{
		ChatID: "c", FileName: "report.pdf", MimeType: "application/pdf", Data: data})
	if err != nil {
		t.Fatal(err)
	}
	if m.Document == nil || m.Document.FileName != "report.pdf" || m.Chat.Title != "T" {
		t.Fatalf("SendDocument = %+v", m)
	}
	r := s.last(t)
	checkCommon(t, r, "sendDocument", "multipart/form-data")
	if fmt.Sprint(r.Form) != fmt.Sprint(map[string]string{"chat_id": "c"}) {
		t.Fatalf("form = %v", r.Form)
	}
	if f := r.Files["document"]; f.Name != "report.pdf" || f.ContentType != "application/pdf" || !bytes.Equal(f.Data, data) {
		t.Fatalf("file part = %q %q %q", f.Name, f.ContentType, f.Data)
	}
	// No name, no type: defaults and sniffing.
	if _, err := s.client().SendDocument(context.Background(), cred(testToken), buko.SendMediaParams{ChatID: "c", Data: []byte("hello")}); err != nil {
		t.Fatal(err)
	}
	if f := s.last(t).Files["document"]; f.Name != "document" || !strings.HasPrefix(f.ContentType, "text/plain") {
		t.Fatalf("defaults: %q %q", f.Name, f.ContentType)
	}
}

func TestMediaRefusedLocally(t *testing.T) {
	s := newAPIServer(t, ok(msgResult))
	c := s.client()
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		call func() error
		code string
	}{
		{"photo over 20 MB", func() error {
			_, err := c.SendPhoto(ctx, cred(testToken), buko.SendMediaParams{ChatID: "c", MimeType: "image/png", Data: make([]byte, buko.MaxPhotoBytes+1)})
			return err
		}, buko.CodePayloadTooLarge},
		{"document over 50 MB", func() error {
			_, err := c.SendDocument(ctx, cred(testToken), buko.SendMediaParams{ChatID: "c", Data: make([]byte, buko.MaxDocumentSize+1)})
			return err
		}, buko.CodePayloadTooLarge},
		{"photo declared as pdf", func() error {
			_, err := c.SendPhoto(ctx, cred(testToken), buko.SendMediaParams{ChatID: "c", MimeType: "application/pdf", Data: pngBytes})
			return err
		}, buko.CodeBadRequest},
		{"photo bytes not an image", func() error {
			_, err := c.SendPhoto(ctx, cred(testToken), buko.SendMediaParams{ChatID: "c", Data: []byte("just text")})
			return err
		}, buko.CodeBadRequest},
		{"bad MIME syntax", func() error {
			_, err := c.SendDocument(ctx, cred(testToken), buko.SendMediaParams{ChatID: "c", MimeType: "no slash;;", Data: []byte("x")})
			return err
		}, buko.CodeBadRequest},
		{"empty photo", func() error {
			_, err := c.SendPhoto(ctx, cred(testToken), buko.SendMediaParams{ChatID: "c", MimeType: "image/png"})
			return err
		}, buko.CodeBadRequest},
	} {
		e := apiErr(t, tc.call())
		if !e.Local() || e.Status != 0 || e.Code != tc.code || !buko.IsCode(e, tc.code) || buko.IsRetryable(e) || errors.Is(e, buko.ErrMalformedResponse) {
			t.Errorf("%s: %+v", tc.name, e)
		}
		if !strings.Contains(e.Error(), "not sent") {
			t.Errorf("%s: error %q does not say it was not sent", tc.name, e)
		}
	}
	if n := len(s.requests()); n != 0 {
		t.Fatalf("server saw %d requests, want 0", n)
	}
	// Exactly at the limit is sent.
	if _, err := c.SendPhoto(ctx, cred(testToken), buko.SendMediaParams{ChatID: "c", MimeType: "image/jpeg", Data: make([]byte, buko.MaxPhotoBytes)}); err != nil {
		t.Fatal(err)
	}
	if f := s.last(t).Files["photo"]; len(f.Data) != buko.MaxPhotoBytes || f.ContentType != "image/jpeg" {
		t.Fatalf("at-limit photo arrived with %d bytes, type %q", len(f.Data), f.ContentType)
	}
}

func TestGetUpdates(t *testing.T) {
	s := newAPIServer(t, ok(`[{"update_id":"10001","message":{"message_id":"42","chat":{"id":"spc_abc123","type":"private"},
		"from":{"id":"u","is_bot":false,"display_name":"Alice","handle":"alice"},"text":"/start","entities":[{"type":"bot_command","offset":0,"length":6}]}},
		{"update_id":10002,"edited_message":{"message_id":"42","chat":{"id":"c","type":"private"},"text":"x","edit_date":9}},
		{"update_id":"10003","my_chat_member":{"chat":{"id":"c","type":"private"},"date":1,"old_chat_member":{"status":"member"},"new_chat_member":{"status":"kicked"}}},
		{"update_id":"10004","poll":{"future":"kind"}}]`))
	ups, err := s.client().GetUpdates(context.Background(), cred(testToken), buko.GetUpdatesParams{Offset: "10001", Limit: 50, Timeout: 25})
	if err != nil {
		t.Fatal(err)
	}
	if len(ups) != 4 {
		t.Fatalf("got %d updates", len(ups))
	}
	kinds := []string{ups[0].Kind(), ups[1].Kind(), ups[2].Kind(), ups[3].Kind()}
	if fmt.Sprint(kinds) != "[message edited_message my_chat_member ]" || ups[1].UpdateID != "10002" ||
		ups[0].Message.Entities[0].Length != 6 || ups[2].MyChatMember.NewChatMember.Status != buko.MemberKicked {
		t.Fatalf("updates = %+v", ups)
	}
	r := s.last(t)
	checkCommon(t, r, "getUpdates", "application/json")
	// offset goes as a string.
	if !bytes.Contains(r.Body, []byte(`"offset":"10001"`)) || !bytes.Contains(r.Body, []byte(`"limit":50`)) || !bytes.Contains(r.Body, []byte(`"timeout":25`)) {
		t.Fatalf("body = %s", r.Body)
	}

	for _, h := range []http.HandlerFunc{ok(`[]`), ok(`null`), reply(200, `{"ok":true}`)} {
		s := newAPIServer(t, h)
		ups, err := s.client().GetUpdates(context.Background(), cred(testToken), buko.GetUpdatesParams{})
		if err != nil || ups == nil || len(ups) != 0 {
			t.Fatalf("empty poll: %v, %v", ups, err)
		}
		if got := string(s.last(t).Body); got != "{}" {
			t.Fatalf("zero params body = %s", got)
		}
	}

	for _, res := range []string{`{"update_id":"1"}`, `[{"update_id":"01"}]`, `[{"message":{}}]`, `[1]`, `"x"`} {
		s := newAPIServer(t, ok(res))
		_, err := s.client().GetUpdates(context.Background(), cred(testToken), buko.GetUpdatesParams{})
		if e := apiErr(t, err); !e.Malformed() || !errors.Is(err, buko.ErrMalformedResponse) {
			t.Fatalf("result %s: %+v", res, e)
		}
	}
}

// The http.Client's own Timeout must not cut a long poll short.
func TestGetUpdatesOutlivesClientTimeout(t *testing.T) {
	release := make(chan struct{})
	s := newAPIServer(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-time.After(500 * time.Millisecond): // the poll "times out" with nothing
		case <-r.Context().Done():
			return
		}
		ok(`[]`)(w, r)
	})
	defer close(release)
	c := buko.NewClient(s.URL, &http.Client{Timeout: 50 * time.Millisecond})
	if _, err := c.GetUpdates(context.Background(), cred(testToken), buko.GetUpdatesParams{Timeout: 1}); err != nil {
		t.Fatalf("long poll cut short: %v", err)
	}
	// The caller's ctx still wins.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := c.GetUpdates(ctx, cred(testToken), buko.GetUpdatesParams{Timeout: 1})
	var re *buko.RequestError
	if !errors.As(err, &re) || !errors.Is(err, context.Canceled) || buko.IsRetryable(err) {
		t.Fatalf("cancelled poll: %T %v", err, err)
	}
	noToken(t, err)
}

// Every documented error, as the server would send it.
func TestErrorCodes(t *testing.T) {
	for _, tc := range []struct {
		status    int
		code      string
		retryable bool
	}{
		{400, buko.CodeBadRequest, false},
		{401, buko.CodeUnauthorized, false},
		{403, buko.CodeChatForbidden, false},
		{403, buko.CodeBotBlocked, false},
		{403, buko.CodeMethodNotAllowedForTier, false},
		{403, buko.CodeMessageForbidden, false},
		{404, buko.CodeChatNotFound, false},
		{409, buko.CodeGatewayActive, false},
		{409, buko.CodeGatewayConnectionLimit, true},
		{413, buko.CodePayloadTooLarge, false},
		{429, buko.CodeRateLimited, true},
		{500, buko.CodeInternal, true},
		{418, "SOMETHING_NEW", false},
		{503, "SOMETHING_NEW", true},
	} {
		s := newAPIServer(t, reply(tc.status, fmt.Sprintf(`{"ok":false,"error_code":%d,"code":%q,"description":"it failed\nbadly"}`, tc.status, tc.code)))
		_, err := s.client().SendMessage(context.Background(), cred(testToken), buko.SendMessageParams{ChatID: "c", Text: "x"})
		e := apiErr(t, err)
		if e.Method != "sendMessage" || e.Status != tc.status || e.Code != tc.code || e.Description != "it failed badly" || e.RetryAfter != 0 {
			t.Errorf("%d %s: %+v", tc.status, tc.code, e)
		}
		if !buko.IsCode(fmt.Errorf("wrapped: %w", err), tc.code) || buko.IsCode(err, "OTHER") {
			t.Errorf("%s: IsCode wrong", tc.code)
		}
		if buko.IsRetryable(err) != tc.retryable {
			t.Errorf("%s: IsRetryable = %v", tc.code, !tc.retryable)
		}
		if errors.Is(err, buko.ErrMalformedResponse) {
			t.Errorf("%s: a proper envelope is not malformed", tc.code)
		}
		want := fmt.Sprintf("buko: sendMessage: HTTP %d %s: it failed badly", tc.status, tc.code)
		if e.Error() != want {
			t.Errorf("Error() = %q, want %q", e.Error(), want)
		}
	}
}

func TestRetryAfter(t *testing.T) {
	const body = `{"ok":false,"error_code":429,"code":"RATE_LIMITED","description":"slow down"%s}`
	for _, tc := range []struct {
		name, field, header string
		want                time.Duration
	}{
		{"body only", `,"retry_after":7`, "", 7 * time.Second},
		{"header only", "", "5", 5 * time.Second},
		{"both, header larger", `,"retry_after":3`, "9", 9 * time.Second},
		{"both, body larger", `,"retry_after":12`, "2", 12 * time.Second},
		{"neither", "", "", 0},
		{"fractional body rounds up", `,"retry_after":1.2`, "", 2 * time.Second},
		{"string body", `,"retry_after":"4"`, "", 4 * time.Second},
		{"garbage body, garbage header", `,"retry_after":{"x":1}`, "soon", 0},
		{"negative", `,"retry_after":-5`, "-3", 0},
		{"absurd is capped", `,"retry_after":1e300`, "", buko.MaxRetryAfter},
		{"http date header", "", time.Now().Add(time.Hour).UTC().Format(http.TimeFormat), time.Hour},
	} {
		s := newAPIServer(t, func(w http.ResponseWriter, r *http.Request) {
			if tc.header != "" {
				w.Header().Set("Retry-After", tc.header)
			}
			reply(429, fmt.Sprintf(body, tc.field))(w, r)
		})
		_, err := s.client().GetMe(context.Background(), cred(testToken))
		e := apiErr(t, err)
		got := e.RetryAfter
		if tc.name == "http date header" { // a date is relative to now: allow the seconds the test took
			if got <= tc.want-time.Minute || got > tc.want {
				t.Errorf("%s: RetryAfter = %v, want about %v", tc.name, got, tc.want)
			}
			continue
		}
		if got != tc.want || e.Code != buko.CodeRateLimited || !buko.IsRetryable(err) {
			t.Errorf("%s: RetryAfter = %v, want %v (%+v)", tc.name, got, tc.want, e)
		}
	}
	// A proxy's 429 page without an envelope still yields the header's wait.
	s := newAPIServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "6")
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(429)
		io.WriteString(w, "<html>Too Many Requests</html>")
	})
	_, err := s.client().GetMe(context.Background(), cred(testToken))
	if e := apiErr(t, err); e.RetryAfter != 6*time.Second || !e.Malformed() || !buko.IsRetryable(err) {
		t.Fatalf("proxy 429: %+v", e)
	}
}

// Bodies that are not an envelope become a malformed *Error naming method and status.
func TestGarbageBodies(t *testing.T) {
	for _, tc := range []struct {
		name      string
		status    int
		ctype     string
		body      string
		retryable bool
	}{
		{"proxy 502 page", 502, "text/html", "<html><body><h1>502 Bad Gateway</h1></body></html>", true},
		{"empty 200", 200, "", "", true},
		{"empty 500", 500, "", "", true},
		{"truncated JSON", 200, "application/json", `{"ok":true,"result":{"message_id":"4`, true},
		{"plain 404", 404, "text/plain", "404 page not found\n", false},
		{"JSON array", 200, "application/json", `[1,2,3]`, true},
		{"JSON null", 200, "application/json", `null`, true},
		{"no ok field", 200, "application/json", `{"result":{"message_id":"1"}}`, true},
		{"ok not bool", 200, "application/json", `{"ok":"true","result":{}}`, true},
		{"200 with ok:false and no code", 200, "application/json", `{"ok":false}`, true},
		{"403 with ok:false and no code", 403, "application/json", `{"ok":false,"description":"nope"}`, false},
		{"ok:true on a 500", 500, "application/json", `{"ok":true,"result":{}}`, true},
		{"ok:true without result", 200, "application/json", `{"ok":true}`, true},
		{"result of wrong type", 200, "application/json", `{"ok":true,"result":"43"}`, true},
		{"message fields of wrong type", 200, "application/json", `{"ok":true,"result":{"message_id":{"a":1},"chat":{}}}`, true},
		{"binary", 200, "application/octet-stream", "\x00\x01\x02\xff\xfe", true},
		{"trailing garbage", 200, "application/json", `{"ok":true,"result":{"message_id":"1"}} x`, true},
	} {
		s := newAPIServer(t, func(w http.ResponseWriter, r *http.Request) {
			if tc.ctype != "" {
				w.Header().Set("Content-Type", tc.ctype)
			}
			w.WriteHeader(tc.status)
			io.WriteString(w, tc.body)
		})
		_, err := s.client().SendMessage(context.Background(), cred(testToken), buko.SendMessageParams{ChatID: "c", Text: "x"})
		e := apiErr(t, err)
		if e.Status != tc.status || e.Method != "sendMessage" || e.Code != "" || !e.Malformed() || !errors.Is(err, buko.ErrMalformedResponse) {
			t.Errorf("%s: %+v", tc.name, e)
		}
		msg := e.Error()
		if !strings.Contains(msg, "sendMessage") || !strings.Contains(msg, fmt.Sprint(tc.status)) || strings.ContainsAny(msg, "\n\x00") {
			t.Errorf("%s: unclear error %q", tc.name, msg)
		}
		if buko.IsRetryable(err) != tc.retryable {
			t.Errorf("%s: IsRetryable = %v", tc.name, !tc.retryable)
		}
	}
}

func TestOversizedBody(t *testing.T) {
	big := strings.Repeat("x", buko.MaxResponseBytes+10)
	for _, declared := range []bool{true, false} {
		s := newAPIServer(t, func(w http.ResponseWriter, r *http.Request) {
			if !declared {
				w.Header().Set("Transfer-Encoding", "chunked")
				w.(http.Flusher).Flush()
			}
			io.WriteString(w, `{"ok":true,"result":{"message_id":"1","text":"`+big+`"}}`)
		})
		_, err := s.client().SendMessage(context.Background(), cred(testToken), buko.SendMessageParams{ChatID: "c", Text: "x"})
		e := apiErr(t, err)
		if !e.Malformed() || e.Status != 200 || !strings.Contains(e.Error(), "larger than") {
			t.Fatalf("declared length %v: %+v", declared, e)
		}
	}
}

// A body cut off mid-way (connection closed before Content-Length bytes).
func TestTruncatedConnection(t *testing.T) {
	s := newAPIServer(t, func(w http.ResponseWriter, r *http.Request) {
		conn, buf, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		buf.WriteString("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"ok\":true,\"res")
		buf.Flush()
		conn.Close()
	})
	_, err := s.client().GetMe(context.Background(), cred(testToken))
	noToken(t, err)
	var re *buko.RequestError
	if !errors.As(err, &re) || re.Status != 200 || re.Method != "getMe" || !buko.IsRetryable(err) {
		t.Fatalf("truncated: %T %v", err, err)
	}
}

func TestTransportErrors(t *testing.T) {
	// A port nobody listens on.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	c := buko.NewClient("http://"+addr, nil)
	_, err = c.SendMessage(context.Background(), cred(testToken), buko.SendMessageParams{ChatID: "c", Text: "x"})
	noToken(t, err)
	var re *buko.RequestError
	if !errors.As(err, &re) || re.Status != 0 || re.Method != "sendMessage" || !buko.IsRetryable(err) {
		t.Fatalf("refused: %T %v", err, err)
	}
	if !strings.Contains(err.Error(), "POST /bot/sendMessage") {
		t.Fatalf("error %q does not name the path", err)
	}
	// An unparsable base URL.
	_, err = buko.NewClient("http://bad host\x00", nil).GetMe(context.Background(), cred(testToken))
	if !errors.As(err, &re) {
		t.Fatalf("bad base URL: %T %v", err, err)
	}
	noToken(t, err)
}

// Redirects are not followed by the default client (a POST would turn into a GET).
func TestRedirectNotFollowed(t *testing.T) {
	s := newAPIServer(t, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/elsewhere", http.StatusFound)
	})
	_, err := s.client().GetMe(context.Background(), cred(testToken))
	if e := apiErr(t, err); e.Status != 302 || !e.Malformed() {
		t.Fatalf("redirect: %+v", e)
	}
	if n := len(s.requests()); n != 1 {
		t.Fatalf("server saw %d requests, want 1", n)
	}
}

// A server (or proxy) that echoes the token back must not get it into the error.
func TestTokenNeverInErrors(t *testing.T) {
	echo := func(status int, ctype, format string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", ctype)
			w.WriteHeader(status)
			fmt.Fprintf(w, format, r.Header.Get("Authorization"))
		}
	}
	for _, h := range []http.HandlerFunc{
		echo(401, "application/json", `{"ok":false,"error_code":401,"code":"UNAUTHORIZED","description":"bad token %s"}`),
		echo(502, "text/html", `<html>debug: Authorization=%s</html>`),
		echo(200, "application/json", `{"ok":true,"result":"%s"}`),
		echo(400, "application/json", `{"ok":false,"code":"BAD_REQUEST","description":"%[1]s %[1]s"}`),
	} {
		s := newAPIServer(t, h)
		c := s.client()
		ctx := context.Background()
		_, err := c.SendMessage(ctx, cred(testToken), buko.SendMessageParams{ChatID: "c", Text: "x"})
		apiErr(t, err)
		_, err = c.GetMe(ctx, cred(testToken))
		apiErr(t, err)
		noToken(t, c.DeleteMessage(ctx, cred(testToken), "c", "1"))
		_, err = c.SendPhoto(ctx, cred(testToken), buko.SendMediaParams{ChatID: "c", Data: pngBytes})
		apiErr(t, err)
	}
}

func TestBadCredentials(t *testing.T) {
	s := newAPIServer(t, ok(msgResult))
	c := s.client()
	for _, cr := range []buko.Credential{nil, cred(""), cred("bot_abc\r\nX-Evil: 1"), cred("bot abc")} {
		_, err := c.GetMe(context.Background(), cr)
		e := apiErr(t, err)
		if !e.Local() || e.Code != buko.CodeUnauthorized || strings.Contains(e.Error(), "bot_abc") {
			t.Errorf("credential %v: %+v", cr, e)
		}
	}
	if n := len(s.requests()); n != 0 {
		t.Fatalf("server saw %d requests, want 0", n)
	}
}

func TestConcurrentCalls(t *testing.T) {
	s := newAPIServer(t, ok(msgResult))
	c := s.client()
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for i := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := c.SendMessage(context.Background(), cred(fmt.Sprintf("%s_%d", testToken, i)), buko.SendMessageParams{ChatID: "c", Text: "x"})
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := len(s.requests()); n != 32 {
		t.Fatalf("server saw %d requests", n)
	}
}
