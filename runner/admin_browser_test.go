package runner

import (
	"context"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"buko.app/agentrunner/buko/sim/web/browser"
	"buko.app/agentrunner/internal/testsupport"
	"buko.app/agentrunner/runner/runnertest"
	"buko.app/agentrunner/sessions"
)

// TestAdminStatusPageInChromium loads the status page against a running
// supervisor in headless Chromium, signs in with the form, checks the bot
// table (live bots as live, a paused one as paused) and saves screenshots
// status.png and status-bot-phone.png to $AGENTRUNNER_TEST_ARTIFACTS (default
// test-artifacts/ at the repo root).
func TestAdminStatusPageInChromium(t *testing.T) {
	browser.Require(t)
	env := runnertest.NewEnv(t, runnertest.EnvOptions{})
	bots := env.AddBots(t, 5, "page")
	ts := startSupervisor(t, env, "page-a")
	c := newAdminServer(t, env, ts.sup, testAdminToken)
	testsupport.Within(t, "every bot live", 60*time.Second, func() bool {
		live, _ := env.Live(t, runnertest.IDs(bots))
		return live == len(bots)
	})
	// A paused bot shows up too.
	c.expect("POST", "/api/v1/bots/"+bots[4].ID+"/pause", testAdminToken, "", 200)

	b := browser.New(t)
	b.SignIn(c.base, testAdminToken)
	want := map[string]string{}
	for _, bot := range bots[:4] {
		want[bot.Handle] = "live"
	}
	want[bots[4].Handle] = "paused"
	b.WaitBotStates(c.base, want)
	b.Screenshot("status.png")

	// A dead letter shows in the page's dead-letter table.
	if err := NewDeadLetterStore(env.Pool, testKeys(t)).DeadLetter(context.Background(), bots[1].ID, sessions.DeadLetter{
		UpdateID: "1", Reason: sessions.ReasonUndecodable, Error: "test", Payload: []byte(`{}`)}); err != nil {
		t.Fatal(err)
	}
	b.Do("see the dead letter",
		chromedp.Navigate(c.base+"/"),
		chromedp.WaitVisible(`#dead-letter-counts tr[data-bot-id="`+bots[1].ID+`"]`),
	)
	b.Screenshot("status-dead-letters.png")

	// The bot page, on a phone.
	b.Do("open the bot page on a phone",
		chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile),
		chromedp.Navigate(c.base+"/bots/"+bots[0].ID),
		chromedp.WaitVisible(chromedp.ID("events")),
	)
	b.Screenshot("status-bot-phone.png")
}
