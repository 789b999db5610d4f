package workflows

import "sync"

// fairness bounds how many activities of one bot run at once in this worker,
// so a bot flooding its chats cannot take every activity slot: an attempt over
// the bound is handed back to Temporal at once (BOT_BUSY, short retry delay)
// and the slot goes to another bot's task.
type fairness struct {
	mu       sync.Mutex
	limit    int
	inflight map[string]int
}

func newFairness(limit int) *fairness {
	return &fairness{limit: limit, inflight: map[string]int{}}
}

// acquire takes a slot for botID; ok is false when the bot is at its bound.
func (f *fairness) acquire(botID string) (release func(), ok bool) {
	if f.limit <= 0 {
		return func() {}, true
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.inflight[botID] >= f.limit {
		return nil, false
	}
	f.inflight[botID]++
	var once sync.Once
	return func() {
		once.Do(func() {
			f.mu.Lock()
			defer f.mu.Unlock()
			if f.inflight[botID]--; f.inflight[botID] <= 0 {
				delete(f.inflight, botID)
			}
		})
	}, true
}
