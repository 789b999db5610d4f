package buko

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"math/big"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

const fuzzToken = "bot_FUZZSECRET_a1b2c3d4e5"

var frameSeeds = []string{
	`{"type":"update","update":{"update_id":"10001","message":{"message_id":"42","chat":{"id":"spc_abc123","type":"private"},"text":"hello"}}}`,
	`{"type":"update","update":{"update_id":"10001","message":{"message_id":"42","date":1783000000,"chat":{"id":"spc_abc123","type":"private"},"from":{"id":"bot_scoped_user_abc","is_bot":false,"display_name":"Alice","handle":"alice"},"text":"/start","entities":[{"type":"bot_command","offset":0,"length":6}]}}}`,
	`{"type":"update","update":{"update_id":"7","edited_message":{"message_id":"3","edit_date":5,"chat":{"id":"g","type":"group","title":"T"},"text":"x","reply_to_message":{"message_id":"2","chat":{"id":"g"},"photo":[{"file_id":"f","mime_type":"image/png","file_size":1}]}}}}`,
	`{"type":"update","update":{"update_id":"8","my_chat_member":{"chat":{"id":"c","type":"private"},"from":{"id":"u"},"date":1,"old_chat_member":{"status":"member"},"new_chat_member":{"status":"kicked"}}}}`,
	`{"type":"update","update":{"update_id":"9","message":{"message_id":"4","chat":{"id":"c"},"document":{"file_id":"d","file_name":"a.pdf"},"caption":"<b>&amp;</b> \u2028"}}}`,
	`{"type":"update","update":{"update_id":"123456789012345678901234567890","reaction":{}}}`,
	`{"type":"ack","update_id":"10001"}`,
	`{"type":"ack","update_id":10001}`,
	`{"type":"ping"}`,
	`{"type":"pong"}`,
	`{"type":"hello","v":2}`,
	`{"type":"update","update":{"update_id":"01"}}`,
	`{"type":"update","update":{}}`,
	`{"type":"ack","update_id":"-1"}`,
	`{"type":"ack","update_id":1.0}`,
	`{"type":7}`,
	`{"TYPE":"PING"}`,
	`{"type":"update","update":{"update_id":"1","message":{"text":"\xff\xfe"}}}`,
	`{"type":"update","update":{"update_id":"1","message":{"entities":[],"photo":[]}}}`,
	`[{"type":"ping"}]`,
	`null`,
	``,
	`{"type":"ping"}{"type":"pong"}`,
	`{"type":"update","update":{"update_id":"1","message":{"reply_to_message":{"reply_to_message":{"reply_to_message":{}}}}}}`,
	`{"type":"update","update":{"update_id":5,"message":{"message_id":42,"chat":{"id":9},"from":{"id":3},"text":"n"}}}`,
	`{"type":"update","update":{"update_id":"6","message":{"message_id":-1,"chat":{"id":1.5}}}}`,
	`{"type":"update","update":{"update_id":"7","message":{"text":{}}}}`,
	`{"type":"update","update":{"update_id":"8","message":{"chat":{"id":"c"},"text":"cut`,
	`{"type":"update","update":{"message":{},"update_id":99},"x":[`,
}

// FuzzDecodeFrame: never panic; what decodes re-encodes and re-decodes to the
// same value, with only the fields its type defines.
func FuzzDecodeFrame(f *testing.F) {
	for _, s := range frameSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fr, err := DecodeFrame(data)
		if err != nil {
			if fr != (Frame{}) {
				t.Fatalf("error %v with a non-zero frame %+v", err, fr)
			}
			checkUndecodable(t, data, err)
			return
		}
		if fr.Type == "" {
			t.Fatal("decoded frame without a type")
		}
		switch fr.Type {
		case FrameUpdate:
			if fr.Update == nil || !fr.Update.UpdateID.Valid() || fr.UpdateID != "" {
				t.Fatalf("update frame %+v", fr)
			}
		case FrameAck:
			if fr.Update != nil || !fr.UpdateID.Valid() {
				t.Fatalf("ack frame %+v", fr)
			}
		default:
			if fr.Update != nil || fr.UpdateID != "" {
				t.Fatalf("%q frame carries fields: %+v", fr.Type, fr)
			}
		}
		enc, err := json.Marshal(fr)
		if err != nil {
			t.Fatalf("re-encoding %+v: %v", fr, err)
		}
		again, err := DecodeFrame(enc)
		if err != nil {
			t.Fatalf("re-decoding %s: %v", enc, err)
		}
		if !reflect.DeepEqual(fr, again) {
			t.Fatalf("round trip changed the frame:\n%+v\n%+v", fr, again)
		}
	})
}

// FuzzDecodeUpdate: the same properties for bare updates (getUpdates items).
func FuzzDecodeUpdate(f *testing.F) {
	for _, s := range frameSeeds {
		var raw struct {
			Update json.RawMessage `json:"update"`
		}
		if json.Unmarshal([]byte(s), &raw) == nil && len(raw.Update) > 0 {
			f.Add([]byte(raw.Update))
		}
		f.Add([]byte(s))
	}
	f.Add([]byte(`{"update_id":18446744073709551616}`))
	f.Add([]byte(`{"update_id":"5","message":null,"edited_message":{"message_id":"1","chat":{"id":"c"}}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		u, err := DecodeUpdate(data)
		if err != nil {
			bad, ok := AsUndecodable(err)
			if !ok {
				t.Fatalf("DecodeUpdate error %T is not an *Undecodable", err)
			}
			checkUndecodable(t, data, bad)
			return
		}
		if !u.UpdateID.Valid() {
			t.Fatalf("accepted invalid update_id %q", u.UpdateID)
		}
		_ = u.Kind()
		_ = u.ChatID()
		enc, err := json.Marshal(u)
		if err != nil {
			t.Fatalf("re-encoding: %v", err)
		}
		again, err := DecodeUpdate(enc)
		if err != nil {
			t.Fatalf("re-decoding %s: %v", enc, err)
		}
		if !reflect.DeepEqual(u, again) {
			t.Fatalf("round trip changed the update:\n%+v\n%+v", u, again)
		}
	})
}

// checkUndecodable: an *Undecodable holds bytes of the input and, if any, a
// canonical update_id.
func checkUndecodable(t *testing.T, data []byte, err error) {
	t.Helper()
	if !errors.Is(err, ErrBadFrame) {
		t.Fatalf("error %v does not match ErrBadFrame", err)
	}
	u, ok := AsUndecodable(err)
	if !ok {
		return
	}
	if !bytes.Contains(data, u.Raw) {
		t.Fatalf("raw %q is not part of the input", u.Raw)
	}
	if u.UpdateID != "" && !u.UpdateID.Valid() {
		t.Fatalf("update_id %q not canonical", u.UpdateID)
	}
}

// FuzzDecodeEnvelope: never panic; round trip stable; numbers never negative.
func FuzzDecodeEnvelope(f *testing.F) {
	for _, s := range []string{
		`{"ok":true,"result":{"message_id":"43","chat":{"id":"spc_abc123","type":"private"},"date":1783000000,"text":"Got it."}}`,
		`{"ok":true,"result":true}`,
		`{"ok":true,"result":[]}`,
		`{"ok":true,"result":null}`,
		`{"ok":true}`,
		`{"ok":false,"error_code":403,"code":"CHAT_FORBIDDEN","description":"User has not started this bot."}`,
		`{"ok":false,"error_code":429,"code":"RATE_LIMITED","description":"Too many","retry_after":3}`,
		`{"ok":false,"error_code":"429","code":"RATE_LIMITED","retry_after":"3.5"}`,
		`{"ok":false,"retry_after":-1e999,"error_code":1e999}`,
		`{"ok":false,"code":null,"description":7}`,
		`{"ok":"yes"}`,
		`<html><body>502 Bad Gateway</body></html>`,
		`{"ok":true,"result":{"a":"<&>\u2028"}}`,
		`{"ok":true,"result": [ 1 , 2 ] }`,
		``,
		`{"ok":true,"result":{"message_id":"4`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		env, err := DecodeEnvelope(data)
		if err != nil {
			return
		}
		if env.RetryAfter < 0 || env.ErrorCode < 0 || env.RetryAfter > int(MaxRetryAfter.Seconds()) {
			t.Fatalf("numbers out of range: %+v", env)
		}
		if env.Result != nil && !json.Valid(env.Result) {
			t.Fatalf("invalid result %q", env.Result)
		}
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(env); err != nil {
			t.Fatalf("re-encoding: %v", err)
		}
		again, err := DecodeEnvelope(buf.Bytes())
		if err != nil {
			t.Fatalf("re-decoding %s: %v", buf.Bytes(), err)
		}
		if !reflect.DeepEqual(env, again) {
			t.Fatalf("round trip changed the envelope:\n%+v\n%+v", env, again)
		}
	})
}

// FuzzInterpret: whatever status, headers and body come back, the client
// answers with a result or a clear *Error, never panics, and never puts the
// token into an error.
func FuzzInterpret(f *testing.F) {
	f.Add(200, "application/json", "", []byte(`{"ok":true,"result":{"message_id":"1","chat":{"id":"c"}}}`))
	f.Add(403, "application/json", "", []byte(`{"ok":false,"error_code":403,"code":"CHAT_FORBIDDEN","description":"User has not started this bot."}`))
	f.Add(429, "application/json", "5", []byte(`{"ok":false,"error_code":429,"code":"RATE_LIMITED","retry_after":3}`))
	f.Add(429, "text/html", "Wed, 21 Oct 2099 07:28:00 GMT", []byte(`<html>slow down</html>`))
	f.Add(502, "text/html", "", []byte(`<html><body>502 Bad Gateway `+fuzzToken+`</body></html>`))
	f.Add(401, "application/json", "", []byte(`{"ok":false,"code":"UNAUTHORIZED","description":"token `+fuzzToken+` unknown"}`))
	f.Add(200, "", "", []byte{})
	f.Add(200, "application/json", "x", []byte(`{"ok":true}`))
	f.Add(500, "application/json; "+fuzzToken, "1e9", []byte("\x00\xff"+fuzzToken+"\n"))
	f.Add(200, "application/json", "", []byte(`{"ok":false}`))
	f.Add(302, "", "", []byte(`{"ok":true,"result":"`+fuzzToken+`"}`))
	f.Fuzz(func(t *testing.T, status int, ctype, retryAfter string, body []byte) {
		if status < 100 || status > 999 {
			status = 200 + (status%100+100)%100
		}
		resp := &http.Response{StatusCode: status, Header: http.Header{}, Body: io.NopCloser(bytes.NewReader(body))}
		if ctype != "" {
			resp.Header.Set("Content-Type", ctype)
		}
		if retryAfter != "" {
			resp.Header.Set("Retry-After", retryAfter)
		}
		for _, method := range []string{MethodGetMe, MethodSendMessage, MethodDeleteMessage, MethodGetUpdates} {
			raw, err := interpret(method, resp, body, fuzzToken)
			if err == nil {
				if status < 200 || status > 299 {
					t.Fatalf("status %d accepted", status)
				}
				// Exercise the result decoders too.
				switch method {
				case MethodGetMe:
					if len(raw) > 0 {
						var me Me
						_ = decodeResult(method, raw, &me)
					}
				case MethodSendMessage:
					if len(raw) > 0 {
						_, err = messageResult(method, raw)
					}
				case MethodDeleteMessage:
					err = trueResult(method, raw)
				}
				if err == nil {
					continue
				}
			}
			msg := err.Error()
			if strings.Contains(msg, fuzzToken) {
				t.Fatalf("token in error: %q", msg)
			}
			if !strings.Contains(msg, method) {
				t.Fatalf("error %q does not name the method", msg)
			}
			if strings.ContainsAny(msg, "\n\r\x00") {
				t.Fatalf("control characters in error %q", msg)
			}
			if e, ok := err.(*Error); !ok || e.RetryAfter < 0 || e.RetryAfter > MaxRetryAfter {
				t.Fatalf("error %T %+v", err, err)
			}
		}
	})
}

// canonicalID maps any string to a valid UpdateID (its digits, no leading zeros).
func canonicalID(s string) UpdateID {
	var b strings.Builder
	for i := 0; i < len(s) && b.Len() < 64; i++ {
		if s[i] >= '0' && s[i] <= '9' && !(b.Len() == 0 && s[i] == '0') {
			b.WriteByte(s[i])
		}
	}
	if b.Len() == 0 {
		return "0"
	}
	return UpdateID(b.String())
}

func bigOf(t *testing.T, id UpdateID) *big.Int {
	n, ok := new(big.Int).SetString(string(id), 10)
	if !ok {
		t.Fatalf("%q is not a decimal", id)
	}
	return n
}

// FuzzUpdateIDOrder: Compare is a total order equal to big-integer order, Next
// is id+1 and sorts after id, and parsing accepts exactly the canonical form.
func FuzzUpdateIDOrder(f *testing.F) {
	f.Add("10001", "10002", "9999")
	f.Add("0", "", "9")
	f.Add("99999999999999999999", "100000000000000000000", "18446744073709551615")
	f.Add("007", "7", "-7")
	f.Add("1e3", "1000", " 1000")
	f.Add("9223372036854775807", "9223372036854775808", "99")
	f.Fuzz(func(t *testing.T, x, y, z string) {
		// Parsing accepts exactly canonical decimals.
		for _, s := range []string{x, y, z} {
			_, err := ParseUpdateID(s)
			canon := len(s) > 0 && len(s) <= 64 && string(canonicalID(s)) == s
			if (err == nil) != canon {
				t.Fatalf("ParseUpdateID(%q) err=%v, canonical=%v", s, err, canon)
			}
			if err != nil && strings.Contains(err.Error(), "\n") {
				t.Fatalf("multi-line error %q", err)
			}
			var id UpdateID
			jerr := json.Unmarshal([]byte(strconv.Quote(s)), &id)
			if (jerr == nil) != canon || (jerr == nil && id != UpdateID(s)) {
				t.Fatalf("UnmarshalJSON(%q) = %q, %v", s, id, jerr)
			}
			if canon {
				var bare UpdateID
				if err := json.Unmarshal([]byte(s), &bare); err != nil || bare != id {
					t.Fatalf("bare %s = %q, %v", s, bare, err)
				}
			}
		}
		a, b, c := canonicalID(x), canonicalID(y), canonicalID(z)
		ba, bb, bc := bigOf(t, a), bigOf(t, b), bigOf(t, c)
		ids, bigs := []UpdateID{a, b, c}, []*big.Int{ba, bb, bc}
		for i := range ids {
			for j := range ids {
				if got, want := ids[i].Compare(ids[j]), bigs[i].Cmp(bigs[j]); got != want {
					t.Fatalf("%s.Compare(%s) = %d, big says %d", ids[i], ids[j], got, want)
				}
			}
		}
		if a.Compare(b) != -b.Compare(a) || a.Compare(a) != 0 || a.Less(b) != (a.Compare(b) < 0) {
			t.Fatalf("not antisymmetric/reflexive: %s %s", a, b)
		}
		if a.Compare(b) <= 0 && b.Compare(c) <= 0 && a.Compare(c) > 0 {
			t.Fatalf("not transitive: %s %s %s", a, b, c)
		}
		if UpdateID("").Compare(a) != -1 {
			t.Fatalf(`"" does not sort below %s`, a)
		}
		n := a.Next()
		if !n.Valid() || n.Compare(a) != 1 || bigOf(t, n).Cmp(new(big.Int).Add(ba, big.NewInt(1))) != 0 {
			t.Fatalf("%s.Next() = %s", a, n)
		}
	})
}
