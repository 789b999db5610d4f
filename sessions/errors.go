package sessions

// permanentError marks a handoff error that retrying cannot fix.
type permanentError struct{ err error }

func (e *permanentError) Error() string   { return e.err.Error() }
func (e *permanentError) Unwrap() error   { return e.err }
func (e *permanentError) Permanent() bool { return true }

// Permanent marks a handoff error that retrying cannot fix (e.g. the update is
// malformed): the session records it (log and metric), keeps the update as a
// dead letter (Config.DeadLetters) and, once that is stored, treats it as done
// so the bot is not stuck. Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err: err}
}

// IsPermanent reports whether err, or any error it wraps, has a method
// Permanent() bool that returns true. Errors marked with Permanent qualify, and
// so do other packages' errors with such a method (the workflows package's).
func IsPermanent(err error) bool {
	for err != nil {
		if p, ok := err.(interface{ Permanent() bool }); ok && p.Permanent() {
			return true
		}
		switch u := err.(type) {
		case interface{ Unwrap() error }:
			err = u.Unwrap()
		case interface{ Unwrap() []error }:
			for _, e := range u.Unwrap() {
				if IsPermanent(e) {
					return true
				}
			}
			return false
		default:
			return false
		}
	}
	return false
}
