package sim

// The raw-update control: a test injects an update whose bytes it chooses
// (an id sent as a number, a field of the wrong type, JSON cut short), to
// exercise a client's handling of updates it cannot read. The update takes
// the bot's next id in the log like any other, so acks and offsets confirm it.

import (
	"bytes"
	"net/http"
	"strconv"
)

// rawIDPlaceholder in a raw update is replaced by the id the update gets.
const rawIDPlaceholder = "$ID"

// ctlRawUpdate: POST /sim/bots/{bot_id}/raw-updates {"raw": "<text>"} queues
// text, with every $ID replaced by the update's id (digits only), as the
// "update" of a Gateway frame and as a getUpdates item, byte for byte. The
// answer is {"update_id": "<id>"}.
func (s *Server) ctlRawUpdate(w http.ResponseWriter, r *http.Request) (any, error) {
	var req struct {
		Raw string `json:"raw"`
	}
	if e := readJSON(w, r, false, &req); e != nil {
		return nil, e
	}
	if req.Raw == "" || len(req.Raw) > 1<<20 {
		return nil, errBadRequest("raw must hold 1 byte to 1 MiB")
	}
	s.mu.RLock()
	b := s.state.bots[r.PathValue("bot_id")]
	s.mu.RUnlock()
	if b == nil {
		return nil, errNotFound("no bot %q", sanitize(r.PathValue("bot_id"), 40))
	}
	b.mu.Lock()
	id := strconv.FormatUint(b.nextIDLocked(), 10)
	data := bytes.ReplaceAll([]byte(req.Raw), []byte(rawIDPlaceholder), []byte(id))
	frame := make([]byte, 0, len(framePrefix)+len(data)+1)
	frame = append(append(append(frame, framePrefix...), data...), '}')
	b.log = append(b.log, entry{id: b.lastID, frame: frame})
	s.stats.updatesCreated.Add(1)
	for _, c := range b.conns {
		c.kickLocked()
	}
	b.wakePollsLocked()
	b.mu.Unlock()
	return map[string]string{"update_id": id}, nil
}
