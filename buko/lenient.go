package buko

// Lenient decoding of identifiers. The spec says every id is a string on the
// wire; a server that sends one as a JSON integer (an id that "looks like a
// number") must not make an update unreadable. update_id has its own decoder
// (updateid.go); the ids of messages, chats and users are decoded here: a JSON
// string is kept as is (they are opaque), a non-negative JSON integer is
// normalised to its canonical decimal string, and anything else (a fraction,
// an exponent, a sign, a boolean, an object) is an error that names the field.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// looseID is an opaque id read from a JSON string or a non-negative integer.
type looseID string

func (id *looseID) UnmarshalJSON(data []byte) error {
	data = bytes.TrimSpace(data)
	switch {
	case len(data) == 0 || bytes.Equal(data, []byte("null")):
		*id = ""
		return nil
	case data[0] == '"':
		var s string
		if err := json.Unmarshal(data, &s); err != nil {
			return err
		}
		*id = looseID(s)
		return nil
	}
	s, err := canonicalInteger(data)
	if err != nil {
		return err
	}
	*id = looseID(s)
	return nil
}

// canonicalInteger returns the decimal string of a bare JSON number that is a
// non-negative integer (no fraction, exponent or sign; "-0" refused).
func canonicalInteger(data []byte) (string, error) {
	if len(data) == 0 {
		return "", errors.New("empty id")
	}
	if len(data) > 64 {
		return "", fmt.Errorf("id of %d characters: at most 64", len(data))
	}
	for _, c := range data {
		if c < '0' || c > '9' {
			return "", fmt.Errorf("id %s: want a string or a non-negative integer", truncate(string(data), 40))
		}
	}
	if data[0] == '0' && len(data) > 1 {
		return "", fmt.Errorf("id %s: leading zero", truncate(string(data), 40))
	}
	return string(data), nil
}

// UnmarshalJSON reads a User with a lenient id.
func (u *User) UnmarshalJSON(data []byte) error {
	type plain User
	aux := struct {
		*plain
		ID looseID `json:"id"`
	}{plain: (*plain)(u)}
	if err := json.Unmarshal(data, &aux); err != nil {
		return fmt.Errorf("from: %w", err)
	}
	u.ID = string(aux.ID)
	return nil
}

// UnmarshalJSON reads a Chat with a lenient id.
func (c *Chat) UnmarshalJSON(data []byte) error {
	type plain Chat
	aux := struct {
		*plain
		ID looseID `json:"id"`
	}{plain: (*plain)(c)}
	if err := json.Unmarshal(data, &aux); err != nil {
		return fmt.Errorf("chat: %w", err)
	}
	c.ID = string(aux.ID)
	return nil
}

// UnmarshalJSON reads a Message with a lenient message_id (chat, from and a
// quoted reply_to_message are lenient through their own types).
func (m *Message) UnmarshalJSON(data []byte) error {
	type plain Message
	aux := struct {
		*plain
		MessageID looseID `json:"message_id"`
	}{plain: (*plain)(m)}
	if err := json.Unmarshal(data, &aux); err != nil {
		return fmt.Errorf("message: %w", err)
	}
	m.MessageID = string(aux.MessageID)
	return nil
}
