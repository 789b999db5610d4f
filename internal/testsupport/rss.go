package testsupport

import (
	"os"
	"strconv"
	"strings"
)

// RSS is this process's resident set size in bytes (VmRSS of
// /proc/self/status), or 0 where there is none (not Linux).
func RSS() uint64 { return rssFile("/proc/self/status") }

// RSSOf is [RSS] of the process pid.
func RSSOf(pid int) uint64 { return rssFile("/proc/" + strconv.Itoa(pid) + "/status") }

func rssFile(path string) uint64 {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				return 0
			}
			return kb * 1024
		}
	}
	return 0
}
