package vault

// Transit batches: Encrypt, Decrypt and Rewrap as batch_input calls of
// BatchSize items, Concurrency calls at a time, each item bound to its bot by
// the derived key's context, with per-item errors.

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/api"
)

type transitResult struct {
	Ciphertext string `json:"ciphertext"`
	Plaintext  string `json:"plaintext"`
	Error      string `json:"error"`
}

func botContext(botID string) string { return base64.StdEncoding.EncodeToString([]byte(botID)) }

// Encrypt implements Cipher.
func (t *Transit) Encrypt(ctx context.Context, items []Plaintext) ([]Sealed, error) {
	out := make([]Sealed, len(items))
	inputs := make([]map[string]any, len(items))
	pre := make([]error, len(items))
	for i, it := range items {
		switch {
		case it.BotID == "":
			pre[i] = fmt.Errorf("%w: empty bot id", ErrConfig)
		case it.Token.IsZero():
			pre[i] = fmt.Errorf("%w: empty", ErrBadToken)
		default:
			inputs[i] = map[string]any{
				"plaintext": base64.StdEncoding.EncodeToString([]byte(it.Token.Reveal())),
				"context":   botContext(it.BotID),
			}
		}
	}
	failed, err := t.batch(ctx, "encrypt", "encrypt", ids(items, func(p Plaintext) string { return p.BotID }), inputs, pre,
		func(i int, r transitResult) error {
			if !strings.HasPrefix(r.Ciphertext, transitPrefix+":v") {
				return fmt.Errorf("vault transit: encrypt returned no ciphertext")
			}
			out[i] = Sealed{BotID: items[i].BotID, Ciphertext: r.Ciphertext}
			return nil
		})
	if err != nil {
		return nil, err
	}
	t.metrics.cipherItems(KindTransit, "encrypt", len(items), len(failed))
	return out, batchErr(len(items), failed)
}

// Decrypt implements Cipher.
func (t *Transit) Decrypt(ctx context.Context, items []Sealed) ([]Token, error) {
	out := make([]Token, len(items))
	inputs, pre := t.sealedInputs(items)
	failed, err := t.batch(ctx, "decrypt", "decrypt", ids(items, func(s Sealed) string { return s.BotID }), inputs, pre,
		func(i int, r transitResult) error {
			raw, err := base64.StdEncoding.DecodeString(r.Plaintext)
			if err != nil {
				return fmt.Errorf("%w: vault returned malformed plaintext", ErrCiphertext)
			}
			tok, err := ParseToken(string(raw))
			if err != nil {
				return fmt.Errorf("%w: decrypted value: %w", ErrCiphertext, err)
			}
			out[i] = tok
			return nil
		})
	if err != nil {
		return nil, err
	}
	t.metrics.cipherItems(KindTransit, "decrypt", len(items), len(failed))
	return out, batchErr(len(items), failed)
}

// Rewrap implements Cipher.
func (t *Transit) Rewrap(ctx context.Context, items []Sealed) ([]Sealed, error) {
	out := make([]Sealed, len(items))
	inputs, pre := t.sealedInputs(items)
	failed, err := t.batch(ctx, "rewrap", "rewrap", ids(items, func(s Sealed) string { return s.BotID }), inputs, pre,
		func(i int, r transitResult) error {
			if !strings.HasPrefix(r.Ciphertext, transitPrefix+":v") {
				return fmt.Errorf("vault transit: rewrap returned no ciphertext")
			}
			out[i] = Sealed{BotID: items[i].BotID, Ciphertext: r.Ciphertext}
			return nil
		})
	if err != nil {
		return nil, err
	}
	t.metrics.cipherItems(KindTransit, "rewrap", len(items), len(failed))
	return out, batchErr(len(items), failed)
}

func (t *Transit) sealedInputs(items []Sealed) ([]map[string]any, []error) {
	inputs := make([]map[string]any, len(items))
	pre := make([]error, len(items))
	for i, it := range items {
		prefix, _, _, err := splitCiphertext(it.Ciphertext)
		switch {
		case it.BotID == "":
			pre[i] = fmt.Errorf("%w: empty bot id", ErrConfig)
		case err != nil:
			pre[i] = err
		case prefix != transitPrefix:
			pre[i] = fmt.Errorf("%w: a %q ciphertext given to Vault Transit", ErrKeyMismatch, prefix)
		default:
			inputs[i] = map[string]any{"ciphertext": it.Ciphertext, "context": botContext(it.BotID)}
		}
	}
	return inputs, pre
}

func ids[T any](items []T, f func(T) string) []string {
	out := make([]string, len(items))
	for i, it := range items {
		out[i] = f(it)
	}
	return out
}

// batch sends inputs (nil entries are skipped: pre holds their error) to
// <mount>/<op>/<key> in chunks of BatchSize, Concurrency chunks at a time,
// and hands each item's result to done. It returns the failed items, or an
// error for a failure of a whole call (nothing is then trusted).
func (t *Transit) batch(ctx context.Context, op, metricOp string, botIDs []string, inputs []map[string]any, pre []error,
	done func(i int, r transitResult) error) ([]ItemError, error) {
	if t.client == nil {
		return nil, fmt.Errorf("%w: transit cipher is not provisioned", ErrConfig)
	}
	var (
		mu     sync.Mutex
		failed []ItemError
	)
	fail := func(i int, err error) {
		mu.Lock()
		failed = append(failed, ItemError{Index: i, BotID: botIDs[i], Err: err})
		mu.Unlock()
	}
	var idx []int // indexes of items to send
	for i := range inputs {
		if pre[i] != nil {
			fail(i, pre[i])
			continue
		}
		idx = append(idx, i)
	}
	var chunks [][]int
	for len(idx) > 0 {
		n := min(t.cfg.BatchSize, len(idx))
		chunks = append(chunks, idx[:n])
		idx = idx[n:]
	}

	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sem := make(chan struct{}, t.cfg.Concurrency)
	var (
		wg       sync.WaitGroup
		firstErr error
		errOnce  sync.Once
	)
	for _, chunk := range chunks {
		select {
		case sem <- struct{}{}:
		case <-cctx.Done():
		}
		if cctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func(chunk []int) {
			defer wg.Done()
			defer func() { <-sem }()
			batch := make([]map[string]any, len(chunk))
			for j, i := range chunk {
				batch[j] = inputs[i]
			}
			results, allFailed, err := t.call(cctx, op, metricOp, batch)
			if err != nil {
				errOnce.Do(func() { firstErr = err; cancel() })
				return
			}
			for j, i := range chunk {
				if allFailed {
					fail(i, fmt.Errorf("%w: vault rejected every item of the batch", ErrCiphertext))
					continue
				}
				if j >= len(results) {
					fail(i, fmt.Errorf("vault transit: %s returned %d results for %d items", op, len(results), len(chunk)))
					continue
				}
				r := results[j]
				if r.Error != "" {
					fail(i, fmt.Errorf("%w: vault: %s", ErrCiphertext, r.Error))
					continue
				}
				if err := done(i, r); err != nil {
					fail(i, err)
				}
			}
		}(chunk)
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return failed, nil
}

// call makes one batch call. When Vault rejects every item (HTTP 400
// without request-level errors) it reports allFailed.
func (t *Transit) call(ctx context.Context, op, metricOp string, batch []map[string]any) (results []transitResult, allFailed bool, err error) {
	body := map[string]any{"batch_input": batch, "partial_failure_response_code": http.StatusOK}
	path := t.cfg.Mount + "/" + op + "/" + t.cfg.Key
	for attempt := 0; ; attempt++ {
		start := time.Now()
		sec, werr := t.client.Logical().WriteWithContext(ctx, path, body)
		if werr != nil {
			err = werr
			var re *api.ResponseError
			if errors.As(err, &re) && re.StatusCode == http.StatusBadRequest && len(re.Errors) == 0 {
				t.metrics.transitCall(metricOp, "ok", time.Since(start))
				return nil, true, nil
			}
			err = t.classify(op, err)
			t.metrics.transitCall(metricOp, resultOf(err), time.Since(start))
			if errors.Is(err, ErrPermission) && attempt == 0 && t.login != nil {
				// The token may have expired under us: log in again once.
				if _, lerr := t.relogin(ctx); lerr == nil {
					continue
				}
			}
			return nil, false, err
		}
		t.metrics.transitCall(metricOp, "ok", time.Since(start))
		if sec == nil || sec.Data == nil {
			return nil, false, fmt.Errorf("vault transit %s: empty response", op)
		}
		raw, err := json.Marshal(sec.Data["batch_results"])
		if err != nil {
			return nil, false, fmt.Errorf("vault transit %s: %w", op, err)
		}
		if err := json.Unmarshal(raw, &results); err != nil {
			return nil, false, fmt.Errorf("vault transit %s: batch_results: %w", op, err)
		}
		return results, false, nil
	}
}
