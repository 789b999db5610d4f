package browser

import (
	"maps"
	"slices"
	"strings"

	"github.com/chromedp/chromedp"
)

// SignIn opens the admin status page (runner) at base and signs in with the
// login form, then checks that the token is not in the address bar. The
// token is typed, never logged.
func (b *Browser) SignIn(base, token string) {
	b.t.Helper()
	b.Do("sign in to the status page",
		chromedp.Navigate(base+"/"),
		chromedp.WaitVisible(chromedp.ID("token")),
		chromedp.SendKeys(chromedp.ID("token"), token),
		chromedp.Submit(chromedp.ID("token")),
		chromedp.WaitVisible(chromedp.ID("bots")),
	)
	if strings.Contains(b.Eval(`location.href`), token) {
		b.t.Fatal("the admin token is in the address bar after signing in")
	}
}

// WaitBotStates loads the signed-in status page at base until its bot table
// lists every handle of want (without the @) in the state want names, such as
// "live" or "paused".
func (b *Browser) WaitBotStates(base string, want map[string]string) {
	b.t.Helper()
	b.LoadUntil("the status page to list the bots as "+describe(want), base+"/", `(want) => {
		const got = {};
		for (const tr of document.querySelectorAll('#bots tbody tr')) {
			const a = tr.querySelector('td a'), pill = tr.querySelector('.pill');
			if (a && pill) got[a.textContent.trim()] = pill.textContent.trim();
		}
		return Object.entries(want).every(([h, s]) => got['@' + h] === s);
	}`, want)
}

// describe lists want as "@a live, @b paused".
func describe(want map[string]string) string {
	var parts []string
	for _, h := range slices.Sorted(maps.Keys(want)) {
		parts = append(parts, "@"+h+" "+want[h])
	}
	return strings.Join(parts, ", ")
}
