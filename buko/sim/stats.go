package sim

import (
	"strconv"
	"sync"
	"sync/atomic"
)

// restMethods are the Bot API methods the simulator serves, the keys of
// rest_calls in /sim/stats.
func restMethods() []string {
	return []string{"getMe", "sendMessage", "sendChatAction", "editMessageText",
		"deleteMessage", "sendPhoto", "sendDocument", "getUpdates"}
}

// stats are the counters of GET /sim/stats.
type stats struct {
	updatesCreated     atomic.Int64
	updatesDelivered   atomic.Int64 // every update handed out (frames and poll items), redeliveries included
	updatesRedelivered atomic.Int64 // those handed out before, or sent twice by chaos
	acked              atomic.Int64 // updates confirmed by an ack or an offset

	gatewayOpen          atomic.Int64 // sockets open now (a closing socket no longer counts)
	gatewayConnections   atomic.Int64 // sockets accepted in total
	gatewayRejectedLimit atomic.Int64 // 409 GATEWAY_CONNECTION_LIMIT
	gatewayReplaced      atomic.Int64 // old sockets closed 4009 by replace_oldest
	gatewayUnauthorized  atomic.Int64 // upgrades refused with 401
	maxConcurrentPerBot  atomic.Int64 // the most sockets one bot had open at once

	restCalls          map[string]*atomic.Int64 // fixed keys, read-only map
	rateLimited        atomic.Int64             // quota 429s, REST and Gateway attempts
	messagesSentByBots atomic.Int64             // sendMessage, sendPhoto, sendDocument that posted

	chaos5xx, chaos429, chaosResponseLost, chaosDropped, chaosDuplicated atomic.Int64

	closeMu sync.Mutex
	closes  map[int]int64 // server-initiated close codes
}

func newStats() *stats {
	st := &stats{restCalls: make(map[string]*atomic.Int64, 8), closes: make(map[int]int64)}
	for _, m := range restMethods() {
		st.restCalls[m] = new(atomic.Int64)
	}
	return st
}

func (st *stats) countClose(code int) {
	st.closeMu.Lock()
	st.closes[code]++
	st.closeMu.Unlock()
}

func (st *stats) noteConcurrent(n int) {
	for {
		cur := st.maxConcurrentPerBot.Load()
		if int64(n) <= cur || st.maxConcurrentPerBot.CompareAndSwap(cur, int64(n)) {
			return
		}
	}
}

// Stats is the answer of GET /sim/stats.
type Stats struct {
	UpdatesCreated             int64            `json:"updates_created"`
	UpdatesDelivered           int64            `json:"updates_delivered"`
	UpdatesRedelivered         int64            `json:"updates_redelivered"`
	Acked                      int64            `json:"acked"`
	GatewayOpen                int64            `json:"gateway_open"`
	GatewayConnections         int64            `json:"gateway_connections"`
	GatewayRejectedLimit       int64            `json:"gateway_rejected_limit"`
	GatewayReplaced            int64            `json:"gateway_replaced"`
	GatewayUnauthorized        int64            `json:"gateway_unauthorized"`
	MaxConcurrentGatewayPerBot int64            `json:"max_concurrent_gateway_per_bot"`
	GatewayCloses              map[string]int64 `json:"gateway_closes"`
	RestCalls                  map[string]int64 `json:"rest_calls"`
	RateLimited                int64            `json:"rate_limited"`
	MessagesSentByBots         int64            `json:"messages_sent_by_bots"`
	Chaos                      ChaosStats       `json:"chaos"`
	Bots                       int              `json:"bots"`
	Users                      int              `json:"users"`
	Chats                      int              `json:"chats"`
}

// ChaosStats counts the faults chaos injected.
type ChaosStats struct {
	Rest5xx           int64 `json:"rest_5xx"`
	Rest429           int64 `json:"rest_429"`
	ResponseLost      int64 `json:"response_lost"`
	DroppedConnection int64 `json:"dropped_connections"`
	Duplicated        int64 `json:"duplicated"`
}

func (st *stats) snapshot() Stats {
	out := Stats{
		UpdatesCreated:             st.updatesCreated.Load(),
		UpdatesDelivered:           st.updatesDelivered.Load(),
		UpdatesRedelivered:         st.updatesRedelivered.Load(),
		Acked:                      st.acked.Load(),
		GatewayOpen:                st.gatewayOpen.Load(),
		GatewayConnections:         st.gatewayConnections.Load(),
		GatewayRejectedLimit:       st.gatewayRejectedLimit.Load(),
		GatewayReplaced:            st.gatewayReplaced.Load(),
		GatewayUnauthorized:        st.gatewayUnauthorized.Load(),
		MaxConcurrentGatewayPerBot: st.maxConcurrentPerBot.Load(),
		GatewayCloses:              map[string]int64{},
		RestCalls:                  make(map[string]int64, len(st.restCalls)),
		RateLimited:                st.rateLimited.Load(),
		MessagesSentByBots:         st.messagesSentByBots.Load(),
		Chaos: ChaosStats{
			Rest5xx:           st.chaos5xx.Load(),
			Rest429:           st.chaos429.Load(),
			ResponseLost:      st.chaosResponseLost.Load(),
			DroppedConnection: st.chaosDropped.Load(),
			Duplicated:        st.chaosDuplicated.Load(),
		},
	}
	for m, n := range st.restCalls {
		out.RestCalls[m] = n.Load()
	}
	st.closeMu.Lock()
	for code, n := range st.closes {
		out.GatewayCloses[strconv.Itoa(code)] = n
	}
	st.closeMu.Unlock()
	return out
}
