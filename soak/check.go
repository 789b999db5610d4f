package soak

import (
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"buko.app/agentrunner/buko/sim"
	"buko.app/agentrunner/vault"
)

// ambiguousLimit is the most ambiguous sends allowed, as a share of the accepted messages.
const ambiguousLimit = 0.001

// resourceSlack is how far above its pre-fault level a replica may end.
const resourceSlack = 0.10

// check evaluates every invariant into rep.
func check(ctx context.Context, s *stack, tr *traffic, faults []*faultRecord, before, after map[string]resources, rep *Report) error {
	trs := make([][]sim.TranscriptMessage, len(tr.chats))
	err := parallel(len(tr.chats), 8, func(i int) error {
		t, err := s.control.Transcript(ctx, tr.chats[i].id, "")
		trs[i] = t
		return err
	})
	if err != nil {
		return fmt.Errorf("transcripts: %w", err)
	}
	byChat := map[string][]sent{}
	for _, m := range tr.sent {
		byChat[m.chat.id] = append(byChat[m.chat.id], m)
	}
	once := invariant{Name: "every accepted user message has exactly one reply (ambiguous sends apart)"}
	order := invariant{Name: "replies in each chat come in the order of its messages"}
	greet := invariant{Name: "every private chat's /start answered exactly once"}
	amb := &rep.Ambiguous
	amb.Causes = map[string]int{}
	for i, c := range tr.chats {
		pos := map[string]int{} // message id → its index among the chat's traffic
		for j, m := range byChat[c.id] {
			pos[m.id] = j
		}
		replies := map[string]int{}
		lastPos, greetings := -1, 0
		for _, m := range trs[i] {
			if m.FromKind != "bot" {
				continue
			}
			if m.ReplyToMessageID == "" {
				greetings++
				continue
			}
			p, ours := pos[m.ReplyToMessageID]
			if !ours {
				continue
			}
			replies[m.ReplyToMessageID]++
			if p < lastPos {
				order.fail(fmt.Sprintf("chat %s: reply to message #%d after the reply to #%d", c.id, p+1, lastPos+1))
			}
			lastPos = max(lastPos, p)
		}
		if !c.group && greetings != 1 {
			greet.fail(fmt.Sprintf("chat %s: %d greetings", c.id, greetings))
		}
		for _, m := range byChat[c.id] {
			switch n := replies[m.id]; {
			case n == 0:
				once.fail(fmt.Sprintf("chat %s: message %s (sent at +%.1fs) never answered", c.id, m.id, m.at.Sub(rep.start(faults)).Seconds()))
				rep.Totals.Lost++
			case n > 1:
				cause := dupCause(s.rec, faults, msgKey{c.id, m.id}, m.at)
				if cause == "" {
					once.fail(fmt.Sprintf("chat %s: message %s answered %d times, no fault explains it", c.id, m.id, n))
					rep.Totals.Duplicates += n - 1
					continue
				}
				amb.Count += n - 1
				amb.Causes[cause] += n - 1
				if len(amb.Examples) < 5 {
					amb.Examples = append(amb.Examples, fmt.Sprintf("chat %s message %s: %d replies (%s)", c.id, m.id, n, cause))
				}
			}
		}
		rep.Totals.Replies += len(replies)
	}
	rep.Totals.Accepted = len(tr.sent)
	amb.Share = float64(amb.Count) / float64(max(1, len(tr.sent)))
	ambInv := invariant{Name: fmt.Sprintf("ambiguous sends ≤ %.1f%% of accepted messages", ambiguousLimit*100), Passed: true}
	if amb.Share > ambiguousLimit {
		ambInv.fail(fmt.Sprintf("%d ambiguous sends of %d messages (%.3f%%)", amb.Count, len(tr.sent), amb.Share*100))
	}
	st, err := s.control.Stats(ctx)
	if err != nil {
		return err
	}
	rep.Sim = st
	conn := invariant{Name: "never two gateway connections of one bot at once"}
	if st.MaxConcurrentGatewayPerBot > 1 {
		conn.fail(fmt.Sprintf("the simulator saw a bot with %d sockets open at once", st.MaxConcurrentGatewayPerBot))
	}
	leak := invariant{Name: "no bot token in any log, the database dumps or Temporal's history"}
	for _, e := range scanTokens(ctx, s, tr.tokens) {
		leak.fail(e)
	}
	// Bots move between replicas across kills and restarts (shards are
	// claimed afresh), and each session costs goroutines: goroutines are held
	// to the fleet's total, RSS to each replica.
	res := invariant{Name: fmt.Sprintf("after the faults and %s quiet, the fleet's goroutines and every replica's RSS within %.0f%% of before", s.cfg.Quiet, resourceSlack*100)}
	rep.Resources = map[string][2]resources{}
	var gBefore, gAfter float64
	for _, c := range s.replicas {
		b, okB := before[c.name]
		a, okA := after[c.name]
		rep.Resources[c.name] = [2]resources{b, a}
		if !okB || !okA {
			res.fail(fmt.Sprintf("%s: no metrics sample (before %v, after %v)", c.name, okB, okA))
			continue
		}
		gBefore, gAfter = gBefore+b.Goroutines, gAfter+a.Goroutines
		if a.RSSBytes > b.RSSBytes*(1+resourceSlack) {
			res.fail(fmt.Sprintf("%s: RSS %.1f MiB, %.1f MiB before", c.name, a.RSSBytes/(1<<20), b.RSSBytes/(1<<20)))
		}
	}
	if gAfter > gBefore*(1+resourceSlack) {
		res.fail(fmt.Sprintf("the replicas run %.0f goroutines, %.0f before", gAfter, gBefore))
	}
	rec := invariant{Name: fmt.Sprintf("every fault healed and recovered within %s", s.cfg.RecoveryLimit)}
	for _, f := range faults {
		if !f.Recovered {
			rec.fail(fmt.Sprintf("%s: %s", f.Name, f.Error))
		}
	}
	if len(faults) < len(s.cfg.Faults) {
		rec.fail(fmt.Sprintf("%d of %d faults injected", len(faults), len(s.cfg.Faults)))
	}
	for _, inv := range []*invariant{&once, &order, &greet, &ambInv, &conn, &leak, &res, &rec} {
		inv.Passed = len(inv.Examples) == 0 && inv.Failures == 0
		rep.Invariants = append(rep.Invariants, *inv)
	}
	return nil
}

// dupCause names why a message got more than one reply, or "" when nothing
// explains it: a send whose answer the simulator dropped, or a worker or
// Temporal restart (an activity that sent and died, or whose completion the
// server lost, is retried) around the time of the message.
func dupCause(rec *recorder, faults []*faultRecord, k msgKey, at time.Time) string {
	if _, ok := rec.lostAt(k); ok {
		return "response lost after the send took effect (simulator chaos)"
	}
	for _, f := range faults {
		switch f.Name {
		case FaultWorkerKill, FaultTemporal, FaultPostgres:
		default:
			continue
		}
		end := f.healedAt.Add(time.Duration(f.RecoverySeconds*float64(time.Second)) + 5*time.Second)
		if at.After(f.At.Add(-30*time.Second)) && at.Before(end) {
			return f.Name + ": a send in flight when it hit was retried"
		}
	}
	return ""
}

// scanTokens looks for every token, as text and hex, in the run's logs and
// in dumps of the app database and of Temporal's databases (history blobs
// are bytea, which pg_dump writes as hex).
func scanTokens(ctx context.Context, s *stack, tokens []string) []string {
	var blobs []struct {
		name string
		data []byte
	}
	add := func(name string, data []byte) {
		blobs = append(blobs, struct {
			name string
			data []byte
		}{name, data})
	}
	logs, _ := filepath.Glob(filepath.Join(s.dir, "*.log"))
	for _, l := range logs {
		if b, err := os.ReadFile(l); err == nil {
			add(filepath.Base(l), b)
		}
	}
	var errs []string
	dump := func(name string, args ...string) {
		var stderr strings.Builder
		cmd := exec.CommandContext(ctx, filepath.Join(s.cfg.PGBinDir, "pg_dump"), args...)
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			errs = append(errs, fmt.Sprintf("pg_dump %s: %v: %s", name, err, lastLines(stderr.String(), 3)))
			return
		}
		add(name, out)
	}
	dump("dump of "+appDB, "-d", s.pg.dsn(appDB))
	host, port := s.temporal.pgHost, fmt.Sprint(s.temporal.pgPort)
	for _, db := range s.tempDBs {
		dump("dump of "+db, "-h", host, "-p", port, "-U", "postgres", "-d", db)
	}
	// Every window of each blob is looked up among the tokens' secret parts
	// (plain and hex), so the scan is linear in the data, not in the tokens.
	plain, hexed := map[string]bool{}, map[string]bool{}
	for _, tok := range tokens {
		secret := strings.TrimPrefix(tok, vault.TokenPrefix)
		if len(secret) < tokenWindow {
			secret = tok
		}
		w := secret[:min(len(secret), tokenWindow)]
		plain[w], hexed[hex.EncodeToString([]byte(w))] = true, true
	}
	var mu sync.Mutex
	_ = parallel(len(blobs), 2, func(i int) error {
		b := blobs[i]
		if windowHit(b.data, plain, tokenWindow) || windowHit(b.data, hexed, 2*tokenWindow) {
			mu.Lock()
			errs = append(errs, fmt.Sprintf("a token's secret (one of %d) appears in %s", len(tokens), b.name))
			mu.Unlock()
		}
		return nil
	})
	sort.Strings(errs)
	if len(blobs) < 3 {
		errs = append(errs, fmt.Sprintf("only %d logs and dumps to scan", len(blobs)))
	}
	return errs
}

// tokenWindow is how many bytes of a token's secret count as a leak.
const tokenWindow = 16

func windowHit(data []byte, set map[string]bool, n int) bool {
	for i := 0; i+n <= len(data); i++ {
		if set[string(data[i:i+n])] {
			return true
		}
	}
	return false
}
