package vault

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"buko.app/agentrunner/buko"
)

const knownSecret = "bot_KNOWNsecret0123456789abcdefXYZ"

func mustToken(t testing.TB, s string) Token {
	t.Helper()
	tok, err := ParseToken(s)
	if err != nil {
		t.Fatalf("ParseToken: %v", err)
	}
	return tok
}

func TestParseToken(t *testing.T) {
	good := []string{"bot_x", "bot_abc123", " bot_abc\n", "bot_" + strings.Repeat("a", MaxTokenLen-4)}
	for _, s := range good {
		tok, err := ParseToken(s)
		if err != nil {
			t.Errorf("ParseToken(len %d): %v", len(s), err)
			continue
		}
		if tok.Reveal() != strings.TrimSpace(s) {
			t.Errorf("Reveal mismatch")
		}
	}
	bad := map[string]string{
		"":                 "empty",
		"  \n":             "empty",
		"bot_":             "nothing after",
		"xoxb-secretvalue": "does not begin",
		"BOT_secretvalue":  "does not begin",
		"bot_secret value": "space",
		"bot_secret\x00":   "control",
		"bot_sécret":       "non-ASCII",
		"bot_" + strings.Repeat("a", MaxTokenLen): "bytes long",
	}
	for s, want := range bad {
		_, err := ParseToken(s)
		if err == nil || !errors.Is(err, ErrBadToken) {
			t.Errorf("ParseToken(%q) = %v, want ErrBadToken", s, err)
			continue
		}
		if !strings.Contains(err.Error(), want) {
			t.Errorf("ParseToken: error %q does not say %q", err, want)
		}
		if len(s) > 6 && strings.Contains(err.Error(), strings.TrimSpace(s)[4:]) {
			t.Errorf("error quotes its input: %q", err)
		}
	}
}

type holder struct {
	Name  string
	Tok   Token
	inner Token
	Ptr   *Token
}

// TestTokenRedacts covers every way a token is commonly printed.
func TestTokenRedacts(t *testing.T) {
	tok := mustToken(t, knownSecret)
	var _ buko.Credential = tok
	if tok.Reveal() != knownSecret {
		t.Fatal("Reveal does not return the secret")
	}
	h := holder{Name: "x", Tok: tok, inner: tok, Ptr: &tok}
	var outs []string
	for _, verb := range []string{"%v", "%s", "%+v", "%#v", "%q", "%x", "%X", "%d", "%10s", "%-20v", "%T"} {
		outs = append(outs, fmt.Sprintf(verb, tok), fmt.Sprintf(verb, &tok), fmt.Sprintf(verb, h), fmt.Sprintf(verb, &h),
			fmt.Sprintf(verb, []Token{tok}), fmt.Sprintf(verb, map[string]Token{"a": tok}))
	}
	outs = append(outs, fmt.Sprint(tok), fmt.Sprintln(tok, h), tok.String(), tok.GoString())
	if got := fmt.Sprintf("%v", tok); got != Redacted {
		t.Errorf("%%v = %q, want %q", got, Redacted)
	}
	if got := fmt.Sprintf("%q", tok); got != `"`+Redacted+`"` {
		t.Errorf("%%q = %q", got)
	}

	// JSON and text.
	for _, v := range []any{tok, &tok, h, &h, []Token{tok}, map[string]any{"t": tok}} {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatalf("json: %v", err)
		}
		outs = append(outs, string(b))
	}
	if b, _ := json.Marshal(tok); string(b) != `"`+Redacted+`"` {
		t.Errorf("json = %s", b)
	}
	txt, _ := tok.MarshalText()
	outs = append(outs, string(txt))

	// zerolog, every way a field can carry it, JSON and console output.
	var zbuf bytes.Buffer
	for _, w := range []func() zerolog.Logger{
		func() zerolog.Logger { return zerolog.New(&zbuf) },
		func() zerolog.Logger { return zerolog.New(zerolog.ConsoleWriter{Out: &zbuf, NoColor: true}) },
	} {
		l := w().With().Interface("ctx_token", tok).Stringer("ctx_str", tok).Logger()
		l.Info().Interface("i", tok).Any("a", tok).Stringer("s", tok).Fields(map[string]any{"f": tok}).
			Interface("h", h).Msgf("msg %v %s %+v", tok, tok, h)
		l.Error().Err(fmt.Errorf("wrapped: %v", tok)).Send()
	}
	outs = append(outs, zbuf.String())

	// slog.
	var sbuf bytes.Buffer
	sl := slog.New(slog.NewJSONHandler(&sbuf, nil))
	sl.Info("m", "tok", tok, "h", h)
	slog.New(slog.NewTextHandler(&sbuf, nil)).Info("m", "tok", tok)
	outs = append(outs, sbuf.String())

	// errors and panics.
	outs = append(outs, fmt.Errorf("x: %v", tok).Error(), fmt.Errorf("x: %w", errors.New(tok.String())).Error())
	func() {
		defer func() { outs = append(outs, fmt.Sprint(recover())) }()
		panic(tok)
	}()

	all := strings.Join(outs, "\n")
	if strings.Contains(all, knownSecret) || strings.Contains(all, knownSecret[4:]) {
		t.Fatalf("the secret leaked into printed output:\n%s", all)
	}
	if !strings.Contains(zbuf.String(), Redacted) || !strings.Contains(sbuf.String(), Redacted) {
		t.Errorf("logs lack the redacted form:\n%s\n%s", zbuf.String(), sbuf.String())
	}
}

func TestTokenZeroAndEqual(t *testing.T) {
	var z Token
	if !z.IsZero() || z.Reveal() != "" || z.String() != "[no token]" {
		t.Errorf("zero token: %v %q", z.IsZero(), z.String())
	}
	a, b := mustToken(t, "bot_aaa"), mustToken(t, "bot_aaa")
	c := mustToken(t, "bot_bbb")
	if !a.Equal(b) || a.Equal(c) || a.Equal(z) {
		t.Error("Equal is wrong")
	}
}
