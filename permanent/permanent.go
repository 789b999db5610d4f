// Package permanent is the one marker for errors that retrying cannot fix (a
// malformed update, a bad agent config, a malformed agent reply). sessions,
// workflows and workflows/agents mark with Mark and ask with Is; it sits below
// them all and imports nothing of the project.
package permanent

import "errors"

// Error is an error marked permanent. Other packages' errors may take part
// too: Is looks for any error in the chain with a method Permanent() bool, so
// a type can say "transient" explicitly (workflows.RunLimitError does).
type Error struct{ Err error }

func (e *Error) Error() string   { return e.Err.Error() }
func (e *Error) Unwrap() error   { return e.Err }
func (e *Error) Permanent() bool { return true }

// Mark marks err as one that retrying cannot fix. Mark(nil) is nil.
func Mark(err error) error {
	if err == nil {
		return nil
	}
	return &Error{Err: err}
}

// Is reports whether the first error in err's chain (errors.As order) that
// has a method Permanent() bool says true.
func Is(err error) bool {
	var p interface{ Permanent() bool }
	return errors.As(err, &p) && p.Permanent()
}
