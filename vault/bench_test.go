package vault

import (
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// BenchmarkTransitDecrypt10k decrypts 10,000 tokens with Transit per
// operation and reports the HTTP calls each took.
//
//	go test -run '^$' -bench TransitDecrypt10k -benchtime 5x ./vault/
func BenchmarkTransitDecrypt10k(b *testing.B) {
	tr, ct := newTestTransit(b)
	ctx := testCtx(b)
	items := makeItems(10000, "bench")
	sealed, err := tr.Encrypt(ctx, items)
	if err != nil {
		b.Fatal(err)
	}
	before := ct.calls.Load()
	b.ResetTimer()
	for b.Loop() {
		if _, err := tr.Decrypt(ctx, sealed); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(ct.calls.Load()-before)/float64(b.N), "calls/op")
	b.ReportMetric(float64(10000*b.N)/b.Elapsed().Seconds(), "tokens/s")
}

// BenchmarkRewrap rotates the key and rewraps 10,000 rows per operation, with
// each cipher, and reports rows per second.
//
//	go test -run '^$' -bench Rewrap -benchtime 3x ./vault/
func BenchmarkRewrap(b *testing.B) {
	const rows = 10000
	for _, name := range []string{KindLocal, KindTransit} {
		b.Run(name, func(b *testing.B) {
			var c Cipher
			if name == KindLocal {
				c = newTestLocal(b)
			} else {
				c, _ = newTestTransit(b)
			}
			pool := testPool(b)
			ctx := testCtx(b)
			s := NewStore(pool, c, zerolog.Nop(), nil)
			seed(b, pool, s, rows, "rwb")
			var spent time.Duration
			for b.Loop() {
				b.StopTimer()
				if _, err := c.RotateKey(ctx); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				st, err := s.Rewrap(ctx, RewrapOptions{Actor: "bench"})
				if err != nil || st.Rewrapped != rows {
					b.Fatalf("%+v %v", st, err)
				}
				spent += st.Duration
			}
			b.ReportMetric(float64(rows*b.N)/spent.Seconds(), "rows/s")
		})
	}
}
