package soak

import (
	"context"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"sync"
	"time"
)

// runState is one run in progress.
type runState struct {
	s      *stack
	tr     *traffic
	rng    *mrand.Rand
	start  time.Time // traffic started
	faults []*faultRecord

	mu     sync.Mutex
	last   sample
	active *faultRecord // the fault holding now, for its "during" figures
	base   sample       // the counters when it began
}

// sample is the simulator's view at one moment.
type sample struct {
	live, pending      int
	acked, botMessages int64
	sent               int
}

func (r *runState) takeSample(ctx context.Context) (sample, error) {
	bots, err := r.s.control.Bots(ctx)
	if err != nil {
		return sample{}, err
	}
	st, err := r.s.control.Stats(ctx)
	if err != nil {
		return sample{}, err
	}
	var out sample
	for _, b := range bots {
		if b.GatewayOpen > 0 {
			out.live++
		}
		out.pending += b.PendingUpdates
	}
	out.acked, out.botMessages, out.sent = st.Acked, st.MessagesSentByBots, r.tr.sentCount()
	return out, nil
}

// sampler keeps the last sample and the figures of the holding fault.
func (r *runState) sampler(ctx context.Context, progress func(sample)) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	n := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		smp, err := r.takeSample(ctx)
		if err != nil {
			continue
		}
		r.mu.Lock()
		r.last = smp
		if f := r.active; f != nil {
			d := &f.During
			if smp.live < d.MinLiveBots {
				d.MinLiveBots = smp.live
			}
			d.MaxPending = max(d.MaxPending, smp.pending)
			d.RepliesSent = smp.botMessages - r.base.botMessages
			d.UpdatesAcked = smp.acked - r.base.acked
			d.MessagesTraded = smp.sent - r.base.sent
		}
		r.mu.Unlock()
		if n++; n%5 == 0 && progress != nil {
			progress(smp)
		}
	}
}

// waitHealthy waits until every bot is live and every message sent before
// t has its reply; it returns when that held, or an error after limit.
func (r *runState) waitHealthy(ctx context.Context, t time.Time, limit time.Duration) (time.Time, error) {
	deadline := time.Now().Add(limit)
	for {
		smp, err := r.takeSample(ctx)
		if err == nil && smp.live == len(r.tr.bots) && r.tr.backlog(r.s.rec, t) == 0 {
			return time.Now(), nil
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("not healthy within %s: %d of %d bots live, %d messages without a reply",
				limit, smp.live, len(r.tr.bots), r.tr.backlog(r.s.rec, t))
		}
		select {
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// Run brings the stack up, runs traffic and faults, checks the invariants,
// tears everything down and returns the report. An error means the soak
// could not run; failed invariants are in the report (Report.Passed).
func Run(ctx context.Context, cfg Config) (rep *Report, err error) {
	cfg.fill()
	if err := cfg.check(); err != nil {
		return nil, err
	}
	log := cfg.Log
	dir := cfg.WorkDir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "agentrunner-soak-"); err != nil {
			return nil, err
		}
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	log.Info().Str("dir", dir).Uint64("seed", cfg.Seed).Msg("soak starting")
	s, err := up(ctx, cfg, dir)
	defer func() {
		if derr := s.down(); derr != nil {
			log.Warn().Err(derr).Msg("tear down")
		}
		keep := cfg.KeepWork || cfg.WorkDir != "" || rep == nil || !rep.Passed
		if !keep {
			_ = os.RemoveAll(dir)
		} else if rep != nil {
			rep.WorkDir = dir
		}
	}()
	if err != nil {
		return nil, fmt.Errorf("bring up: %w (logs in %s)", err, dir)
	}
	t0 := time.Now()
	tr, err := setupTraffic(ctx, s)
	if err != nil {
		return nil, fmt.Errorf("bots and chats: %w", err)
	}
	log.Info().Int("bots", len(tr.bots)).Int("chats", len(tr.chats)).Dur("took", time.Since(t0)).Msg("bots registered, chats open")
	for _, c := range s.components() {
		if err := c.proc.start(); err != nil {
			return nil, err
		}
	}
	r := &runState{s: s, tr: tr, rng: mrand.New(mrand.NewPCG(cfg.Seed, 0x7a26))}
	if _, err := r.waitHealthy(ctx, time.Now(), cfg.StartLimit); err != nil {
		return nil, fmt.Errorf("first start: %w", err)
	}
	if err := waitGreetings(ctx, s, tr, cfg.StartLimit); err != nil {
		return nil, fmt.Errorf("first start: %w", err)
	}
	log.Info().Dur("took", time.Since(t0)).Msg("every bot live, every /start answered")

	tctx, stopTraffic := context.WithCancel(ctx)
	defer stopTraffic()
	sendErrs := make(chan error, 1)
	r.start = time.Now()
	var bg sync.WaitGroup
	bg.Add(2)
	go func() { defer bg.Done(); tr.drive(tctx, s.control, cfg.Rate, cfg.Seed, sendErrs) }()
	go func() { defer bg.Done(); r.sampler(tctx, r.progress) }()
	defer bg.Wait()
	defer stopTraffic()

	warm := max(15*time.Second, cfg.Duration/10)
	r.hold(ctx, warm)
	baseline := measure(ctx, s.components())
	log.Info().Msg("baseline taken; faults begin")

	plan := schedule(cfg.Faults, cfg.Seed)
	gap := (cfg.Duration - warm - cfg.Quiet) / time.Duration(max(1, len(plan)))
	for i, name := range plan {
		if wait := time.Until(r.start.Add(warm + time.Duration(i)*gap)); wait > 0 {
			r.hold(ctx, wait)
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		f := &faultRecord{Name: name, At: time.Now(), AtOffset: time.Since(r.start).Seconds()}
		r.mu.Lock()
		r.faults = append(r.faults, f)
		r.active, r.base = f, r.last
		f.During.MinLiveBots = r.last.live
		r.mu.Unlock()
		log.Info().Str("fault", name).Int("n", i+1).Int("of", len(plan)).Msg("fault injected")
		target, ierr := r.inject(ctx, name)
		f.Target, f.healedAt = target, time.Now()
		f.Held = f.healedAt.Sub(f.At).Seconds()
		r.mu.Lock()
		r.active = nil
		r.mu.Unlock()
		if ierr != nil {
			f.Error = ierr.Error()
			log.Error().Str("fault", name).Err(ierr).Msg("fault could not be healed")
			continue
		}
		healthy, herr := r.waitHealthy(ctx, f.healedAt, cfg.RecoveryLimit)
		if herr != nil {
			f.Error = herr.Error()
			log.Error().Str("fault", name).Err(herr).Msg("no recovery")
			continue
		}
		f.Recovered, f.RecoverySeconds = true, healthy.Sub(f.healedAt).Seconds()
		log.Info().Str("fault", name).Str("target", target).Float64("held_s", f.Held).Float64("recovery_s", f.RecoverySeconds).Msg("recovered")
	}
	if rest := time.Until(r.start.Add(cfg.Duration - cfg.Quiet)); rest > 0 {
		r.hold(ctx, rest)
	}
	r.hold(ctx, cfg.Quiet)
	after := measure(ctx, s.components())
	stopTraffic()
	bg.Wait()
	trafficFor := time.Since(r.start)
	drainedAt, derr := r.waitHealthy(ctx, time.Now(), cfg.RecoveryLimit)
	log.Info().Msg("traffic stopped; checking invariants")

	rep = &Report{Config: reportConfig(cfg), TrafficSeconds: trafficFor.Seconds(), Faults: r.faults, Behaviour: behaviour()}
	if derr != nil {
		rep.DrainError = derr.Error()
	} else {
		rep.DrainSeconds = drainedAt.Sub(r.start.Add(trafficFor)).Seconds()
	}
	select {
	case err := <-sendErrs:
		rep.TrafficError = err.Error()
	default:
	}
	if err := check(ctx, s, tr, r.faults, baseline, after, rep); err != nil {
		return rep, err
	}
	rep.Passed = rep.allPassed()
	return rep, nil
}

// waitGreetings waits until every private chat's /start was answered.
func waitGreetings(ctx context.Context, s *stack, tr *traffic, limit time.Duration) error {
	want := int64(0)
	for _, c := range tr.chats {
		if !c.group {
			want++
		}
	}
	return until(ctx, limit, func() error {
		st, err := s.control.Stats(ctx)
		if err != nil {
			return err
		}
		if st.MessagesSentByBots < want {
			return fmt.Errorf("%d of %d greetings sent", st.MessagesSentByBots, want)
		}
		return nil
	})
}

func (r *runState) progress(smp sample) {
	w := r.s.cfg.Progress
	if w == nil {
		return
	}
	r.mu.Lock()
	active := "-"
	if r.active != nil {
		active = r.active.Name
	}
	done := len(r.faults)
	r.mu.Unlock()
	fmt.Fprintf(w, "soak %5.0fs  sent %6d  bot messages %6d  live %3d/%d  pending %5d  faults %d/%d (now: %s)\n",
		time.Since(r.start).Seconds(), smp.sent, smp.botMessages, smp.live, len(r.tr.bots), smp.pending, done, len(r.s.cfg.Faults), active)
}
