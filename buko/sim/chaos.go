package sim

import (
	"math/rand/v2"
	"sync"
	"time"
)

// ChaosConfig is the fault injection set with PUT /sim/chaos. Rates are
// probabilities in [0, 1]; the zero value injects nothing.
//
// Decisions come from two streams seeded with Seed: one drawn once per Bot
// API call (three numbers each call: 5xx, 429, response lost), one drawn once
// per update frame about to be written to a Gateway socket (two numbers: drop,
// duplicate). The same seed and the same sequence of calls give the same
// faults, so a failing chaos run replays; every PUT restarts both streams.
type ChaosConfig struct {
	Seed                  uint64  `json:"seed"`
	DropConnectionRate    float64 `json:"drop_connection_rate"`
	Rest5xxRate           float64 `json:"rest_5xx_rate"`
	Rest429Rate           float64 `json:"rest_429_rate"`
	DuplicateDeliveryRate float64 `json:"duplicate_delivery_rate"`
	ResponseLostRate      float64 `json:"response_lost_rate"`
	LatencyMS             int     `json:"latency_ms"`
}

func (c ChaosConfig) validate() *apiError {
	for name, v := range map[string]float64{
		"drop_connection_rate":    c.DropConnectionRate,
		"rest_5xx_rate":           c.Rest5xxRate,
		"rest_429_rate":           c.Rest429Rate,
		"duplicate_delivery_rate": c.DuplicateDeliveryRate,
		"response_lost_rate":      c.ResponseLostRate,
	} {
		if !(v >= 0 && v <= 1) {
			return errBadRequest("%s must be between 0 and 1", name)
		}
	}
	if c.LatencyMS < 0 || c.LatencyMS > 60_000 {
		return errBadRequest("latency_ms must be between 0 and 60000")
	}
	return nil
}

func (c ChaosConfig) restActive() bool {
	return c.Rest5xxRate > 0 || c.Rest429Rate > 0 || c.ResponseLostRate > 0 || c.LatencyMS > 0
}

func (c ChaosConfig) gatewayActive() bool {
	return c.DropConnectionRate > 0 || c.DuplicateDeliveryRate > 0
}

type chaos struct {
	mu   sync.Mutex
	cfg  ChaosConfig
	rest *rand.Rand
	gw   *rand.Rand
}

func newChaos() *chaos {
	c := &chaos{}
	c.set(ChaosConfig{})
	return c
}

func (c *chaos) set(cfg ChaosConfig) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cfg = cfg
	c.rest = rand.New(rand.NewPCG(cfg.Seed, 0xc4a0_0001))
	c.gw = rand.New(rand.NewPCG(cfg.Seed, 0xc4a0_0002))
}

func (c *chaos) get() ChaosConfig {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cfg
}

// restFault is what chaos does to one Bot API call.
type restFault struct {
	latency      time.Duration
	fail5xx      bool
	fail429      bool
	responseLost bool
}

func (c *chaos) restCall() restFault {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.cfg.restActive() {
		return restFault{}
	}
	a, b, d := c.rest.Float64(), c.rest.Float64(), c.rest.Float64()
	return restFault{
		latency:      time.Duration(c.cfg.LatencyMS) * time.Millisecond,
		fail5xx:      a < c.cfg.Rest5xxRate,
		fail429:      b < c.cfg.Rest429Rate,
		responseLost: d < c.cfg.ResponseLostRate,
	}
}

// gatewayFrame decides the fate of one update frame: drop the connection
// instead of sending it, or send it twice.
func (c *chaos) gatewayFrame() (drop, duplicate bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.cfg.gatewayActive() {
		return false, false
	}
	a, b := c.gw.Float64(), c.gw.Float64()
	return a < c.cfg.DropConnectionRate, b < c.cfg.DuplicateDeliveryRate
}
