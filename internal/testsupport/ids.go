package testsupport

import (
	"crypto/rand"
	"encoding/hex"
)

// RandHex returns n random bytes as 2n hex digits, for names of a test's own
// (databases, keys, namespaces, task queues).
func RandHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand panics instead)
	return hex.EncodeToString(b)
}
