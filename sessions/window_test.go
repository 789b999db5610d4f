package sessions

import (
	"fmt"
	"testing"
	"time"

	"buko.app/agentrunner/buko"
)

func upd(id, chat string) *buko.Update {
	return &buko.Update{UpdateID: buko.UpdateID(id), Message: &buko.Message{MessageID: id, Chat: buko.Chat{ID: chat}}}
}

func TestWindowWatermarkAndDuplicates(t *testing.T) {
	var w window
	w.init(4)
	now := time.Now()
	accept := func(id string, want acceptResult) *entry {
		t.Helper()
		res, e := w.accept(upd(id, "c"), now, false)
		if res != want {
			t.Fatalf("accept %s: %v, want %v", id, res, want)
		}
		return e
	}
	e9 := accept("9", acceptNew)
	e10 := accept("10", acceptNew) // longer id sorts after
	accept("9", acceptDuplicate)
	e12 := accept("12", acceptNew)
	e11 := accept("11", acceptNew) // out of order: inserted in id order
	if w.undone != 4 || len(w.pending) != 4 || w.pending[2].id != "11" {
		t.Fatalf("pending %v", w.pending)
	}
	if w.complete(e10) || w.watermark != "" {
		t.Fatal("watermark moved past an undone lower update")
	}
	if !w.complete(e9) || w.watermark != "10" {
		t.Fatalf("watermark %q, want 10", w.watermark)
	}
	accept("10", acceptOld)
	accept("3", acceptOld)
	if w.complete(e12) || w.watermark != "10" {
		t.Fatalf("watermark %q", w.watermark)
	}
	if !w.complete(e11) || w.watermark != "12" || w.pending != nil || w.undone != 0 {
		t.Fatalf("watermark %q pending %v undone %d", w.watermark, w.pending, w.undone)
	}
	if res, _ := w.accept(upd("13", "c"), now, true); res != acceptRefused {
		t.Fatalf("draining accept: %v", res)
	}
	isNew, _ := w.noteAcked("12", now)
	again, _ := w.noteAcked("10", now)
	if !isNew || again || w.lastAcked != "12" {
		t.Fatalf("noteAcked: %v %v %q", isNew, again, w.lastAcked)
	}
	if w.peak != 4 {
		t.Errorf("peak %d", w.peak)
	}
}

func TestLaneOfSpreads(t *testing.T) {
	seen := map[int]int{}
	for i := range 1000 {
		seen[laneOf(fmt.Sprintf("spc_%d", i), 8)]++
	}
	if len(seen) != 8 {
		t.Fatalf("lanes used: %v", seen)
	}
	for l, n := range seen {
		if n < 60 {
			t.Errorf("lane %d got %d of 1000", l, n)
		}
	}
	if first, again := laneOf("spc_x", 8), laneOf("spc_x", 8); first != again {
		t.Fatal("not stable")
	}
}

func TestBackoffBounds(t *testing.T) {
	for attempt := range 40 {
		for range 50 {
			d := backoff(attempt, 100*time.Millisecond, 5*time.Second)
			ceil := min(100*time.Millisecond<<min(attempt, 20), 5*time.Second)
			if d < 0 || d > ceil {
				t.Fatalf("attempt %d: %v outside [0, %v]", attempt, d, ceil)
			}
		}
	}
	if d := between(time.Second, 2*time.Second); d < time.Second || d > 2*time.Second {
		t.Fatalf("between: %v", d)
	}
}

func TestConfigValidation(t *testing.T) {
	if _, err := Start(t.Context(), Config{Delivery: "carrier pigeon", Lanes: -1}); err == nil {
		t.Fatal("bad config accepted")
	} else {
		t.Log(err)
	}
}
