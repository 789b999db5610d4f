package soak

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// resources are one component's goroutines and RSS (medians of samples).
type resources struct {
	Goroutines float64 `json:"goroutines"`
	RSSBytes   float64 `json:"rss_bytes"`
	Sessions   float64 `json:"sessions"` // agentrunner_runner_sessions (replicas)
}

// scrape reads the two gauges from a /metrics page.
func scrape(ctx context.Context, url string) (resources, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return resources{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return resources{}, err
	}
	defer resp.Body.Close()
	var out resources
	found := 0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		var dst *float64
		switch name {
		case "go_goroutines":
			dst = &out.Goroutines
		case "process_resident_memory_bytes":
			dst = &out.RSSBytes
		case "agentrunner_runner_sessions":
			out.Sessions, _ = strconv.ParseFloat(strings.TrimSpace(val), 64)
			continue
		default:
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
		if err != nil {
			return resources{}, fmt.Errorf("%s: %w", name, err)
		}
		*dst = v
		found++
	}
	if found < 2 {
		return resources{}, fmt.Errorf("%s: go_goroutines or process_resident_memory_bytes missing", url)
	}
	return out, sc.Err()
}

// measure takes five samples a second apart of every component and keeps
// the medians (one sample is noisy: a burst of handoffs lifts goroutines).
func measure(ctx context.Context, cs []*component) map[string]resources {
	samples := map[string][]resources{}
	for i := range 5 {
		if i > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(time.Second):
			}
		}
		for _, c := range cs {
			if r, err := scrape(ctx, c.metricsURL()); err == nil {
				samples[c.name] = append(samples[c.name], r)
			}
		}
	}
	out := map[string]resources{}
	for name, rs := range samples {
		g := make([]float64, len(rs))
		m := make([]float64, len(rs))
		n := make([]float64, len(rs))
		for i, r := range rs {
			g[i], m[i], n[i] = r.Goroutines, r.RSSBytes, r.Sessions
		}
		out[name] = resources{Goroutines: median(g), RSSBytes: median(m), Sessions: median(n)}
	}
	return out
}

func median(v []float64) float64 {
	slices.Sort(v)
	return v[len(v)/2]
}
