package browser

import "fmt"

// TestID is the CSS selector of an element by its data-testid.
func TestID(id string) string { return fmt.Sprintf("[data-testid=%q]", id) }

// WaitChatMessage waits until the open chat of the simulator's chat page
// (buko/sim/web) shows a message from fromKind ("user" or "bot") with exactly
// this text, and returns its message id.
func (b *Browser) WaitChatMessage(what, fromKind, text string) string {
	b.t.Helper()
	return b.WaitString(what, `(kind, text) => {
		for (const li of document.querySelectorAll('#transcript li.msg')) {
			const t = li.querySelector('.text');
			if (li.dataset.fromKind === kind && t && t.textContent === text) return li.dataset.messageId || false;
		}
		return false;
	}`, fromKind, text)
}
