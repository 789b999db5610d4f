package bench

// report.go holds what the scenarios report: the latency summary and the
// tables of their results.

import (
	"fmt"
	"io"
	"math"
	"slices"
	"text/tabwriter"
	"time"
)

// LatencySummary is a latency distribution in milliseconds (0.01 ms steps).
type LatencySummary struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	Max  float64 `json:"max"`
	Mean float64 `json:"mean"`
}

// Summarize is the nearest-rank percentiles, the max and the mean of lat
// (all zero when it is empty).
func Summarize(lat []time.Duration) LatencySummary {
	if len(lat) == 0 {
		return LatencySummary{}
	}
	s := slices.Clone(lat)
	slices.Sort(s)
	pct := func(p float64) float64 {
		i := int(math.Ceil(p*float64(len(s)))) - 1
		return ms(s[max(0, min(i, len(s)-1))])
	}
	var sum time.Duration
	for _, d := range s {
		sum += d
	}
	return LatencySummary{P50: pct(0.50), P90: pct(0.90), P99: pct(0.99), Max: ms(s[len(s)-1]), Mean: ms(sum / time.Duration(len(s)))}
}

func ms(d time.Duration) float64 { return math.Round(float64(d)/float64(time.Millisecond)*100) / 100 }

func newTable(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0) }

// WriteText writes the result as a table.
func (r *EchoResult) WriteText(w io.Writer) error {
	tw := newTable(w)
	fmt.Fprintf(tw, "bot\t@%s (%s) at %s, %d Gateway socket(s) open\n", r.BotHandle, r.BotID, r.SimURL, r.GatewaySockets)
	fmt.Fprintf(tw, "load\t%d messages over %d chat(s), one in flight per chat; timeout %s\n", r.Sent, r.Concurrency, time.Duration(r.TimeoutSeconds*float64(time.Second)))
	fmt.Fprintf(tw, "replies\t%d of %d sent; lost %d (late %d); duplicates %d\n", r.Replied, r.Sent, r.Lost, r.Late, r.Duplicates)
	l := r.LatencyMS
	fmt.Fprintf(tw, "latency\tp50 %.1f ms  p90 %.1f ms  p99 %.1f ms  max %.1f ms  (mean %.1f ms)\n", l.P50, l.P90, l.P99, l.Max, l.Mean)
	fmt.Fprintf(tw, "throughput\t%.1f replies/s over %.2f s\n", r.RepliesPerSec, r.ElapsedSeconds)
	fmt.Fprintf(tw, "sim 429s\t%d", r.SimRateLimited)
	if r.SimRateLimited > 0 {
		fmt.Fprint(tw, " (a tier quota paced Bot API calls: latency includes the waits)")
	}
	fmt.Fprintln(tw)
	return tw.Flush()
}

// WriteText writes the result as a table.
func (r *GatewayResult) WriteText(w io.Writer) error {
	tw := newTable(w)
	fmt.Fprintf(tw, "simulator\t%s\n", r.SimURL)
	fmt.Fprintf(tw, "sockets\t%d opened in %.2f s\n", r.Sockets, r.OpenSeconds)
	fmt.Fprintf(tw, "memory (this process)\t%d B per socket (heap %d B + stacks %d B), %.2f goroutines per socket\n", r.BytesPerSocket, r.HeapBytesPerSocket, r.StackBytesPerSocket, r.GoroutinesPerSocket)
	fmt.Fprintf(tw, "posted\t%d updates by %d producers in %.2f s\n", r.Updates, r.Producers, r.PostSeconds)
	fmt.Fprintf(tw, "delivered\t%d in %.2f s: %.0f updates/s\n", r.Delivered, r.DeliveredSeconds, r.DeliveredPerSec)
	fmt.Fprintf(tw, "acked (sim count)\t%d in %.2f s: %.0f updates/s\n", r.Acked, r.AckedSeconds, r.AckedPerSec)
	fmt.Fprintf(tw, "redelivered\t%d\n", r.Redelivered)
	return tw.Flush()
}
