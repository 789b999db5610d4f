package buko

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// UpdateID is a per-bot update id: a decimal string without leading zeros,
// strictly increasing per bot, gaps allowed (docs/architecture.md §3). It is never
// parsed into a fixed-size integer: ids compare by length, then lexically, so
// they may grow past int64 without harm. The zero value "" sorts below every id.
type UpdateID string

// Valid reports whether id is a canonical decimal id ("0" or [1-9][0-9]*).
func (id UpdateID) Valid() bool {
	if len(id) == 0 || len(id) > 64 {
		return false
	}
	if id[0] == '0' && len(id) > 1 {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] < '0' || id[i] > '9' {
			return false
		}
	}
	return true
}

// ParseUpdateID validates s as an UpdateID.
func ParseUpdateID(s string) (UpdateID, error) {
	id := UpdateID(s)
	if !id.Valid() {
		return "", fmt.Errorf("buko: invalid update_id %q: want a decimal string without leading zeros", truncate(s, 40))
	}
	return id, nil
}

// Compare returns -1, 0 or +1 as id sorts before, equal to or after other.
// Both are assumed canonical; "" sorts first.
func (id UpdateID) Compare(other UpdateID) int {
	switch {
	case len(id) < len(other):
		return -1
	case len(id) > len(other):
		return 1
	case id < other:
		return -1
	case id > other:
		return 1
	}
	return 0
}

// Less reports whether id sorts before other.
func (id UpdateID) Less(other UpdateID) bool { return id.Compare(other) < 0 }

// Next returns id+1 in decimal, the polling offset that confirms id.
// The empty id's successor is "0".
func (id UpdateID) Next() UpdateID {
	if id == "" {
		return "0"
	}
	b := []byte(id)
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] < '9' {
			b[i]++
			return UpdateID(b)
		}
		b[i] = '0'
	}
	return UpdateID(append([]byte{'1'}, b...))
}

// UnmarshalJSON accepts the documented string form and, tolerantly, a bare
// JSON integer; anything else (fractions, signs, leading zeros) is an error.
func (id *UpdateID) UnmarshalJSON(data []byte) error {
	data = bytes.TrimSpace(data)
	if bytes.Equal(data, []byte("null")) {
		*id = ""
		return nil
	}
	var s string
	if len(data) > 0 && data[0] == '"' {
		if err := json.Unmarshal(data, &s); err != nil {
			return fmt.Errorf("buko: update_id: %w", err)
		}
	} else {
		s = string(data)
	}
	v, err := ParseUpdateID(s)
	if err != nil {
		return err
	}
	*id = v
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
