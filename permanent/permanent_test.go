package permanent

import (
	"errors"
	"fmt"
	"testing"
)

type other struct{ perm bool }

func (e other) Error() string   { return "other" }
func (e other) Permanent() bool { return e.perm }

func TestIs(t *testing.T) {
	base := errors.New("x")
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{base, false},
		{Mark(base), true},
		{fmt.Errorf("a: %w", Mark(base)), true},
		{other{true}, true},
		{other{false}, false},
		{fmt.Errorf("b: %w", other{true}), true},
		{errors.Join(base, other{true}), true},
		{errors.Join(base, other{false}), false},
	} {
		if got := Is(tc.err); got != tc.want {
			t.Errorf("Is(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
	if Mark(nil) != nil {
		t.Error("Mark(nil) != nil")
	}
	if !errors.Is(Mark(base), base) {
		t.Error("Mark does not wrap")
	}
	var pe *Error
	if !errors.As(fmt.Errorf("w: %w", Mark(base)), &pe) || pe.Err != base {
		t.Error("errors.As does not find *Error")
	}
}
