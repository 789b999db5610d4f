package buko

// Updates that cannot be read. A getUpdates item or a Gateway update frame
// that does not decode is not dropped and does not fail its batch: it comes
// back as an *Undecodable carrying its raw bytes and, when one can be found,
// its update_id and chat id, so the caller can keep it (a dead letter) and
// still acknowledge past it.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// Undecodable is an update that could not be read. It is an error (matching
// ErrBadFrame) so DecodeFrame can return it. Raw holds user content: never log
// it, only its size.
type Undecodable struct {
	// UpdateID is the update's id when one could be read (leniently), even if
	// other fields are broken; "" when none could be found.
	UpdateID UpdateID
	// ChatID is the chat the update belongs to when it could be read; "" if not.
	ChatID string
	// Raw is the update object as received, or the whole frame when no update
	// object could be isolated.
	Raw []byte
	// Err says why it did not decode (no user text: positions and types only).
	Err error
}

func (u *Undecodable) Error() string {
	id := "without an update_id"
	if u.UpdateID != "" {
		id = string(u.UpdateID)
	}
	return fmt.Sprintf("undecodable update %s (%d bytes): %v", id, len(u.Raw), u.Err)
}

// Unwrap returns the decode error.
func (u *Undecodable) Unwrap() error { return u.Err }

// Is makes every Undecodable match ErrBadFrame.
func (u *Undecodable) Is(target error) bool { return target == ErrBadFrame }

// AsUndecodable reports whether err is (or wraps) an *Undecodable.
func AsUndecodable(err error) (*Undecodable, bool) {
	var u *Undecodable
	ok := errors.As(err, &u)
	return u, ok
}

// undecodable builds the Undecodable of an update object that failed with err.
func undecodable(raw []byte, err error) *Undecodable {
	u := &Undecodable{Raw: bytes.Clone(raw), Err: err}
	u.UpdateID, u.ChatID = peekIDs(raw)
	return u
}

// peekIDs finds update_id (and the chat id) of a broken update object: first
// by decoding only those fields (the rest may have any shape), then, if the
// JSON itself is broken (truncated, say), by reading its top-level tokens up
// to the break. An id that is not a canonical decimal is not returned.
func peekIDs(raw []byte) (UpdateID, string) {
	var p struct {
		UpdateID json.RawMessage `json:"update_id"`
		Message  json.RawMessage `json:"message"`
		Edited   json.RawMessage `json:"edited_message"`
		Member   json.RawMessage `json:"my_chat_member"`
	}
	if json.Unmarshal(raw, &p) != nil {
		return scanUpdateID(raw, "update_id"), ""
	}
	var id UpdateID
	if id.UnmarshalJSON(p.UpdateID) != nil {
		id = ""
	}
	chat := ""
	for _, m := range []json.RawMessage{p.Message, p.Edited, p.Member} {
		var c struct {
			Chat struct {
				ID json.RawMessage `json:"id"`
			} `json:"chat"`
		}
		if isNull(m) || json.Unmarshal(m, &c) != nil {
			continue
		}
		var v looseID
		if v.UnmarshalJSON(c.Chat.ID) == nil && v != "" {
			chat = string(v)
			break
		}
	}
	return id, chat
}

// scanPath reads the tokens of a possibly broken JSON object and returns the
// value at path (keys of nested objects) if it comes before the break and is
// a string or a number; "" otherwise.
func scanPath(raw []byte, path ...string) string {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	return scanObject(dec, path)
}

func scanObject(dec *json.Decoder, path []string) string {
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return ""
	}
	for {
		key, err := dec.Token()
		if err != nil {
			return ""
		}
		k, ok := key.(string)
		if !ok {
			return ""
		}
		if k != path[0] {
			if skipValue(dec) != nil {
				return ""
			}
			continue
		}
		if len(path) > 1 {
			return scanObject(dec, path[1:])
		}
		v, err := dec.Token()
		if err != nil {
			return ""
		}
		switch t := v.(type) {
		case string:
			return t
		case json.Number:
			return t.String()
		}
		return ""
	}
}

// scanUpdateID is scanPath for an update_id, validated.
func scanUpdateID(raw []byte, path ...string) UpdateID {
	id, err := ParseUpdateID(scanPath(raw, path...))
	if err != nil {
		return ""
	}
	return id
}

// skipValue consumes one JSON value from dec.
func skipValue(dec *json.Decoder) error {
	depth := 0
	for {
		tok, err := dec.Token()
		if err != nil {
			if err == io.EOF {
				return io.ErrUnexpectedEOF
			}
			return err
		}
		switch tok {
		case json.Delim('{'), json.Delim('['):
			depth++
		case json.Delim('}'), json.Delim(']'):
			depth--
		}
		if depth == 0 {
			return nil
		}
	}
}

// Batch is one getUpdates answer read item by item: the updates that decoded,
// in order, and those that did not.
type Batch struct {
	Updates     []Update
	Undecodable []*Undecodable
}
