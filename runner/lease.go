package runner

// Leases: a shard held at a fencing epoch, the refusal of a write whose lease
// is not held (FencedError), and the shard hash that maps a bot to its shard.

import (
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
)

// Lease is one shard held at a fencing epoch. The epoch grows by one at every
// claim, so a lease names one tenure of one replica.
type Lease struct {
	Shard int
	Epoch int64
}

// ErrFenced is matched by errors.Is for every *FencedError.
var ErrFenced = errors.New("runner: fenced")

// FencedError refuses a shard-owned write: the lease is not (or no longer)
// held by this replica at that epoch.
type FencedError struct {
	Lease  Lease
	Reason string
}

func (e *FencedError) Error() string {
	return fmt.Sprintf("runner: shard %d epoch %d: fenced: %s", e.Lease.Shard, e.Lease.Epoch, e.Reason)
}

// Is makes errors.Is(err, ErrFenced) true.
func (e *FencedError) Is(target error) bool { return target == ErrFenced }

func leaseShards(ls []Lease) []int {
	out := make([]int, len(ls))
	for i, l := range ls {
		out[i] = l.Shard
	}
	slices.Sort(out)
	return out
}

// ShardOf is the shard of a bot: FNV-1a (32-bit) of the bot id, mod n.
func ShardOf(botID string, n int) int {
	if n <= 0 {
		return 0
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(botID))
	return int(h.Sum32() % uint32(n))
}

func leaseShardsInt32(ls []Lease) []int32 {
	out := make([]int32, len(ls))
	for i, l := range ls {
		out[i] = int32(l.Shard)
	}
	return out
}
