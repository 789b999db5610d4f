package buko

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Gateway WebSocket close codes (docs/architecture.md §3).
const (
	CloseGoingAway    = 1001 // server shutting down
	CloseInternal     = 1011 // server-side failure
	ClosePingTimeout  = 4000 // two pongs missed
	CloseTokenRevoked = 4001 // token rotated or revoked: fetch the new one
	CloseBadFrame     = 4002 // the client sent a frame the server could not read
	CloseReplaced     = 4009 // a newer connection replaced this one (replace_oldest)
)

// MaxFrameBytes bounds one Gateway frame. The largest legal update (a
// 5000-character message replying to another, with entities) is far below;
// use it as the WebSocket read limit.
const MaxFrameBytes = 1 << 20

// ErrBadFrame matches every error of DecodeFrame and DecodeUpdate.
var ErrBadFrame = errors.New("buko: bad frame")

// DecodeFrame reads one Gateway text frame. It rejects what is not a JSON
// object with a string "type", an "update" frame without a valid update and an
// "ack" frame without a valid update_id. Unknown fields are ignored; a frame of
// an unknown type is returned with only Type set, for the caller to skip. The
// result carries only the fields its type defines (Update for "update",
// UpdateID for "ack"), so it re-encodes to an equivalent frame.
func DecodeFrame(data []byte) (Frame, error) {
	if len(data) > MaxFrameBytes {
		return Frame{}, fmt.Errorf("%w: %d bytes, over %d", ErrBadFrame, len(data), MaxFrameBytes)
	}
	var raw struct {
		Type     json.RawMessage `json:"type"`
		Update   json.RawMessage `json:"update"`
		UpdateID json.RawMessage `json:"update_id"`
	}
	if !isObject(data) {
		return Frame{}, unreadableFrame(data, fmt.Errorf("%w: not a JSON object", ErrBadFrame))
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return Frame{}, unreadableFrame(data, fmt.Errorf("%w: %w", ErrBadFrame, err))
	}
	var typ string
	if len(raw.Type) == 0 || raw.Type[0] != '"' || json.Unmarshal(raw.Type, &typ) != nil || typ == "" {
		return Frame{}, unreadableFrame(data, fmt.Errorf("%w: missing or non-string \"type\"", ErrBadFrame))
	}
	switch typ {
	case FrameUpdate:
		if isNull(raw.Update) {
			return Frame{}, unreadableFrame(data, fmt.Errorf("%w: update frame without an update", ErrBadFrame))
		}
		u, err := DecodeUpdate(raw.Update)
		if err != nil {
			return Frame{}, err
		}
		return Frame{Type: typ, Update: &u}, nil
	case FrameAck:
		var id UpdateID
		if isNull(raw.UpdateID) {
			return Frame{}, fmt.Errorf("%w: ack frame without an update_id", ErrBadFrame)
		}
		if err := id.UnmarshalJSON(raw.UpdateID); err != nil {
			return Frame{}, fmt.Errorf("%w: ack: %w", ErrBadFrame, err)
		}
		return Frame{Type: typ, UpdateID: id}, nil
	}
	return Frame{Type: typ}, nil
}

// unreadableFrame is the error of a frame that may be an update frame but
// could not be read as one: an *Undecodable holding the whole frame (and the
// update_id, if "update"."update_id" can be read before the damage). A frame
// whose "type" reads as something other than "update" gets err itself.
func unreadableFrame(data []byte, err error) error {
	if t := scanPath(data, "type"); t != "" && t != FrameUpdate {
		return err
	}
	u := &Undecodable{Raw: bytes.Clone(data), Err: err}
	u.UpdateID = scanUpdateID(data, "update", "update_id")
	return u
}

// DecodeUpdate reads one Update object (a Gateway frame's "update", or an item
// of a getUpdates result). update_id is required and must be canonical (a bare
// JSON integer is tolerated); the ids of messages, chats and users may be
// strings or non-negative integers (normalised to decimal strings); unknown
// fields and unknown update kinds are accepted. Empty arrays decode as nil, so
// a decoded update re-encodes and re-decodes to the same value. Every error is
// an *Undecodable (matching ErrBadFrame) with the update's raw bytes and, when
// they can be read, its update_id and chat id.
func DecodeUpdate(data []byte) (Update, error) {
	if !isObject(data) {
		return Update{}, undecodable(data, fmt.Errorf("%w: update is not a JSON object", ErrBadFrame))
	}
	var u Update
	if err := json.Unmarshal(data, &u); err != nil {
		return Update{}, undecodable(data, fmt.Errorf("%w: update: %w", ErrBadFrame, err))
	}
	if u.UpdateID == "" {
		return Update{}, undecodable(data, fmt.Errorf("%w: update without an update_id", ErrBadFrame))
	}
	normalizeMessage(u.Message)
	normalizeMessage(u.EditedMessage)
	return u, nil
}

func normalizeMessage(m *Message) {
	for ; m != nil; m = m.ReplyToMessage {
		if len(m.Entities) == 0 {
			m.Entities = nil
		}
		if len(m.Photo) == 0 {
			m.Photo = nil
		}
	}
}

// DecodeEnvelope reads a REST response body. It requires a JSON object with a
// boolean "ok" and tolerates the rest: a non-string code or description is
// dropped, error_code and retry_after may be numbers (fractions round up) or
// numeric strings, anything else there reads as 0; retry_after is capped at
// MaxRetryAfter. A null result reads as absent; a present one is compacted.
func DecodeEnvelope(data []byte) (Envelope, error) {
	if !isObject(data) {
		return Envelope{}, errors.New("buko: envelope is not a JSON object")
	}
	var raw struct {
		OK          json.RawMessage `json:"ok"`
		Result      json.RawMessage `json:"result"`
		ErrorCode   json.RawMessage `json:"error_code"`
		Code        json.RawMessage `json:"code"`
		Description json.RawMessage `json:"description"`
		RetryAfter  json.RawMessage `json:"retry_after"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return Envelope{}, fmt.Errorf("buko: envelope: %w", err)
	}
	var env Envelope
	if err := json.Unmarshal(raw.OK, &env.OK); err != nil || isNull(raw.OK) {
		return Envelope{}, errors.New("buko: envelope without a boolean \"ok\"")
	}
	if !isNull(raw.Result) {
		var b bytes.Buffer
		if err := json.Compact(&b, raw.Result); err != nil {
			return Envelope{}, fmt.Errorf("buko: envelope result: %w", err)
		}
		env.Result = b.Bytes()
	}
	env.Code = looseString(raw.Code)
	env.Description = looseString(raw.Description)
	env.ErrorCode = int(looseNumber(raw.ErrorCode, 999))
	env.RetryAfter = int(looseNumber(raw.RetryAfter, MaxRetryAfter.Seconds()))
	return env, nil
}

// AckFrame encodes {"type":"ack","update_id":id}.
func AckFrame(id UpdateID) []byte {
	b, _ := json.Marshal(Frame{Type: FrameAck, UpdateID: id}) // cannot fail: strings only
	return b
}

// PingFrame encodes {"type":"ping"}.
func PingFrame() []byte { return []byte(`{"type":"ping"}`) }

// PongFrame encodes {"type":"pong"}.
func PongFrame() []byte { return []byte(`{"type":"pong"}`) }

func isObject(data []byte) bool {
	t := bytes.TrimLeft(data, " \t\r\n")
	return len(t) > 0 && t[0] == '{'
}

func isNull(raw json.RawMessage) bool {
	return len(raw) == 0 || bytes.Equal(raw, []byte("null"))
}

func looseString(raw json.RawMessage) string {
	var s string
	if len(raw) == 0 || raw[0] != '"' || json.Unmarshal(raw, &s) != nil {
		return ""
	}
	return s
}

// looseNumber reads a JSON number or numeric string, rounding fractions up;
// negatives, garbage and NaN read as 0, and values are capped at limit.
func looseNumber(raw json.RawMessage, limit float64) float64 {
	if isNull(raw) {
		return 0
	}
	s := string(raw)
	if raw[0] == '"' {
		if json.Unmarshal(raw, &s) != nil {
			return 0
		}
		s = strings.TrimSpace(s)
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil && !errors.Is(err, strconv.ErrRange) || math.IsNaN(f) || f <= 0 {
		return 0
	}
	return math.Min(math.Ceil(f), limit)
}
