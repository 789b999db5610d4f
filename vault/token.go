package vault

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
)

// Redacted is how every Token prints.
const Redacted = "bot_…[redacted]"

// TokenPrefix begins every Buko bot token.
const TokenPrefix = "bot_"

// MaxTokenLen bounds what ParseToken accepts; real tokens are far shorter.
const MaxTokenLen = 1024

// ErrBadToken marks a string that cannot be a bot token. Its messages never
// quote the input.
var ErrBadToken = errors.New("not a bot token")

// Token is a bot token. It redacts itself in fmt (every verb, including %#v
// and %q), JSON, text marshaling, zerolog, slog, panics and errors; Reveal is
// the only way to the secret, and belongs at the wire (it implements
// buko.Credential). The zero Token is empty and prints as "[no token]".
//
// The secret is held by a closure, out of reach of reflection: even a
// struct that holds a Token in an unexported field, printed with any verb,
// shows a function address, not the secret.
type Token struct{ reveal func() string }

// ParseToken validates s (surrounding whitespace, such as the newline of a
// file or of stdin, is trimmed) and wraps it. Errors wrap ErrBadToken and never
// contain s.
func ParseToken(s string) (Token, error) {
	s = strings.TrimSpace(s)
	switch {
	case s == "":
		return Token{}, fmt.Errorf("%w: empty", ErrBadToken)
	case len(s) > MaxTokenLen:
		return Token{}, fmt.Errorf("%w: %d bytes long (at most %d)", ErrBadToken, len(s), MaxTokenLen)
	case !strings.HasPrefix(s, TokenPrefix):
		return Token{}, fmt.Errorf("%w: it does not begin with %q", ErrBadToken, TokenPrefix)
	case len(s) == len(TokenPrefix):
		return Token{}, fmt.Errorf("%w: nothing after %q", ErrBadToken, TokenPrefix)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c >= 0x7f {
			return Token{}, fmt.Errorf("%w: it contains a space, control or non-ASCII character (at byte %d)", ErrBadToken, i)
		}
	}
	return Token{reveal: func() string { return s }}, nil
}

// Reveal returns the secret. Call it only where the token goes on the wire.
func (t Token) Reveal() string {
	if t.reveal == nil {
		return ""
	}
	return t.reveal()
}

// IsZero reports whether t holds no token.
func (t Token) IsZero() bool { return t.reveal == nil }

// Equal compares two tokens in constant time.
func (t Token) Equal(o Token) bool {
	return subtle.ConstantTimeCompare([]byte(t.Reveal()), []byte(o.Reveal())) == 1
}

func (t Token) redacted() string {
	if t.IsZero() {
		return "[no token]"
	}
	return Redacted
}

// String implements fmt.Stringer (also used by panics and zerolog's Stringer).
func (t Token) String() string { return t.redacted() }

// GoString implements fmt.GoStringer for %#v.
func (t Token) GoString() string { return "vault.Token(" + strconv.Quote(t.redacted()) + ")" }

// Format implements fmt.Formatter so that every verb, not only %v and %s,
// prints the redacted form.
func (t Token) Format(f fmt.State, verb rune) {
	switch {
	case verb == 'q':
		_, _ = f.Write([]byte(strconv.Quote(t.redacted())))
	case verb == 'v' && f.Flag('#'):
		_, _ = f.Write([]byte(t.GoString()))
	default:
		_, _ = f.Write([]byte(t.redacted()))
	}
}

// MarshalJSON implements json.Marshaler (and so zerolog's Interface and Any).
func (t Token) MarshalJSON() ([]byte, error) { return []byte(strconv.Quote(t.redacted())), nil }

// MarshalText implements encoding.TextMarshaler.
func (t Token) MarshalText() ([]byte, error) { return []byte(t.redacted()), nil }

// LogValue implements slog.LogValuer.
func (t Token) LogValue() slog.Value { return slog.StringValue(t.redacted()) }
