package devstack

// banner.go prints where everything of a dev run is.

import (
	"fmt"
	"io"
)

// Banner is what a dev run tells the developer once it is up.
type Banner struct {
	APIURL         string // Buko: the simulator's URL, or BUKO_API_URL's
	External       bool   // APIURL is not dev's simulator (nothing seeded)
	AdminAddr      string
	AdminTokenFile string
	TemporalAddr   string
	Namespace      string
	TaskQueue      string
	Database       string // the database URL, its password hidden
	Chats          []Chat
}

// Write prints the banner.
func (b Banner) Write(w io.Writer) {
	fmt.Fprintf(w, "\nagentrunner dev is up\n")
	if b.External {
		fmt.Fprintf(w, "  Buko:        %s (BUKO_API_URL; nothing seeded)\n", b.APIURL)
	} else {
		fmt.Fprintf(w, "  chat here:   %s/  (simulator web chat: pick %q)\n", b.APIURL, UserName)
	}
	fmt.Fprintf(w, "  look here:   http://%s/  (admin: status page, /healthz, /readyz, /metrics)\n", b.AdminAddr)
	fmt.Fprintf(w, "  admin token: %s  (page login; API: Authorization: Bearer $(cat that file))\n", b.AdminTokenFile)
	fmt.Fprintf(w, "  Temporal:    %s (namespace %s, task queue %s)\n", b.TemporalAddr, b.Namespace, b.TaskQueue)
	fmt.Fprintf(w, "  Postgres:    %s\n", b.Database)
	for _, c := range b.Chats {
		fmt.Fprintf(w, "  bot @%s (%s): bot_id %s, chat %s\n", c.Handle, c.Agent, c.BotID, c.ChatID)
	}
	fmt.Fprintf(w, "Ctrl-C stops everything.\n\n")
}
