package workflows

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"go.temporal.io/api/operatorservice/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"google.golang.org/protobuf/types/known/durationpb"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/buko/sim"
	"buko.app/agentrunner/internal/testsupport"
	"buko.app/agentrunner/vault"
	"buko.app/agentrunner/workflows/codec"
)

// Integration tests run against the real Temporal dev server ($TEMPORAL_ADDRESS)
// in a namespace registered for this test process, and the Buko simulator.

// testRun holds what all integration tests of this process share: the
// namespace (so the history scan covers exactly this run) and every secret
// the tests used (tokens, user texts), for that scan.
var testRun struct {
	once    sync.Once
	ns      string
	err     error
	mu      sync.Mutex
	secrets []string
}

func rememberSecret(s string) {
	testRun.mu.Lock()
	defer testRun.mu.Unlock()
	testRun.secrets = append(testRun.secrets, s)
}

// TestMain deletes the namespace this run registered, through the operator
// service, once every test is done (the dev server keeps namespaces in memory),
// and then fails the run when a test left a goroutine behind.
func TestMain(m *testing.M) { testsupport.Main(m, deleteTestNamespace) }

func deleteTestNamespace() {
	if testRun.ns != "" {
		if c, err := client.Dial(client.Options{HostPort: os.Getenv("TEMPORAL_ADDRESS"), Logger: NewLogger(zerolog.Nop())}); err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			if _, err := c.OperatorService().DeleteNamespace(ctx, &operatorservice.DeleteNamespaceRequest{Namespace: testRun.ns}); err != nil {
				fmt.Fprintf(os.Stderr, "could not delete test namespace %s: %v\n", testRun.ns, err)
			}
			cancel()
			c.Close()
		}
	}
}

func temporalAddress(t testing.TB) string {
	t.Helper()
	return testsupport.Getenv(t, "Temporal", "TEMPORAL_ADDRESS", testsupport.ServicesHint)
}

// testNamespace registers (once per process) a fresh namespace and waits until it serves.
func testNamespace(t testing.TB) string {
	t.Helper()
	addr := temporalAddress(t)
	testRun.once.Do(func() {
		ns := "agentrunner-test-" + testsupport.RandHex(4)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		nc, err := client.NewNamespaceClient(client.Options{HostPort: addr, Logger: NewLogger(zerolog.Nop())})
		if err != nil {
			testRun.err = fmt.Errorf("namespace client: %w", err)
			return
		}
		defer nc.Close()
		if err := nc.Register(ctx, &workflowservice.RegisterNamespaceRequest{
			Namespace:                        ns,
			Description:                      "agentrunner workflows integration tests",
			WorkflowExecutionRetentionPeriod: durationpb.New(24 * time.Hour),
		}); err != nil {
			testRun.err = fmt.Errorf("register namespace: %w", err)
			return
		}
		c, err := client.Dial(client.Options{HostPort: addr, Namespace: ns, Logger: NewLogger(zerolog.Nop())})
		if err != nil {
			testRun.err = err
			return
		}
		defer c.Close()
		for {
			_, err := c.ListWorkflow(ctx, &workflowservice.ListWorkflowExecutionsRequest{Namespace: ns, PageSize: 1})
			if err == nil {
				break
			}
			select {
			case <-ctx.Done():
				testRun.err = fmt.Errorf("namespace %s never became usable: %w", ns, err)
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
		testRun.ns = ns
	})
	if testRun.err != nil {
		t.Fatal(testRun.err)
	}
	return testRun.ns
}

// testKeys is a fresh payload keyring for integration tests.
func testKeys(t testing.TB) *codec.Keyring {
	t.Helper()
	k, err := codec.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	kr, err := codec.NewKeyring("test1", map[string][]byte{"test1": k})
	if err != nil {
		t.Fatal(err)
	}
	return kr
}

// env is one integration test's world: a simulator, a Temporal client on the
// test namespace with the codec, its own task queue, and a worker.
type env struct {
	t       testing.TB
	sim     *httptest.Server
	simURL  string
	api     *buko.Client
	c       client.Client
	ns      string
	queue   string
	keys    *codec.Keyring
	tokens  *memTokens
	bots    *memBots
	marks   *memMarks
	reg     *prometheus.Registry
	metrics *Metrics
	handoff *Handoff
}

func newEnv(t testing.TB) *env {
	t.Helper()
	ns := testNamespace(t)
	e := &env{t: t, ns: ns, queue: "test-" + t.Name() + "-" + testsupport.RandHex(3), keys: testKeys(t),
		tokens: &memTokens{m: map[string]vault.Token{}}, bots: &memBots{m: map[string]BotSpec{}}, marks: &memMarks{m: map[string]buko.UpdateID{}}, reg: prometheus.NewRegistry()}
	e.metrics = NewMetrics(e.reg)
	s := sim.New(sim.Options{})
	e.sim = httptest.NewServer(s)
	t.Cleanup(func() { s.Close(); e.sim.Close() })
	e.simURL = e.sim.URL
	e.api = buko.NewClient(e.sim.URL, nil)
	opts, err := ClientOptions(DialOptions{Address: temporalAddress(t), Namespace: ns, Keys: e.keys, Logger: zerolog.Nop(), Metrics: e.metrics})
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.Dial(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	e.c = c
	e.handoff = NewHandoff(c, e.queue).WithMetrics(e.metrics).WithSettings(fastSettings())
	return e
}

// fastSettings keep retries short so chaos tests finish quickly.
func fastSettings() Settings {
	return Settings{
		IdleTimeout:  10 * time.Minute,
		RetryInitial: 50 * time.Millisecond,
		RetryMax:     500 * time.Millisecond,
		GiveUpAfter:  5 * time.Minute,
		SendTimeout:  10 * time.Second,
		AgentTimeout: 20 * time.Second,
	}
}

func (e *env) startWorker(o WorkerOptions) *Worker {
	e.t.Helper()
	o.TaskQueue = e.queue
	o.Bots, o.Tokens, o.API = e.bots, e.tokens, e.api
	if o.Marks == nil {
		o.Marks = e.marks
	}
	if o.Metrics == nil {
		o.Metrics = e.metrics
	}
	o.Logger = zerolog.Nop()
	w, err := NewWorker(e.c, o)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := w.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(w.Stop)
	return w
}

// ---- simulator control API ----

// control is the simulator's control API; must fails the test on an error.
func (e *env) control() *sim.Control {
	return sim.NewControl(e.simURL, sim.ControlOptions{HTTPClient: http.DefaultClient})
}

func (e *env) must(err error) {
	e.t.Helper()
	if err != nil {
		e.t.Fatal(err)
	}
}

// newBot creates a bot in the simulator and registers it with the directory and tokens.
func (e *env) newBot(handle, agent string, config json.RawMessage) BotSpec {
	e.t.Helper()
	cb, err := e.control().CreateBot(context.Background(), sim.BotSettings{Handle: handle, DisplayName: "Bot " + handle})
	e.must(err)
	tok, err := vault.ParseToken(cb.Token)
	if err != nil {
		e.t.Fatal(err)
	}
	rememberSecret(cb.Token)
	spec := BotSpec{ID: cb.BotID, Handle: handle, DisplayName: "Bot " + handle, Tier: TierOfficial, Agent: agent, AgentConfig: config}
	e.tokens.set(cb.BotID, tok)
	e.bots.set(spec)
	return spec
}

func (e *env) newUser(name string) string {
	u, err := e.control().CreateUser(context.Background(), name, strings.ToLower(name)+testsupport.RandHex(2))
	e.must(err)
	return u.UserID
}

func (e *env) startChat(userID, botID string) string {
	c, err := e.control().OpenPrivateChat(context.Background(), userID, botID)
	e.must(err)
	return c.ChatID
}

func (e *env) say(chatID, userID, text string) string {
	rememberSecret(text)
	id, err := e.control().Say(context.Background(), chatID, userID, text)
	e.must(err)
	return id
}

func (e *env) transcript(chatID string) []sim.TranscriptMessage {
	out, err := e.control().Transcript(context.Background(), chatID, "")
	e.must(err)
	return out
}

// botReplies returns the bot's messages in a chat, oldest first.
func (e *env) botReplies(chatID string) []sim.TranscriptMessage {
	var out []sim.TranscriptMessage
	for _, m := range e.transcript(chatID) {
		if m.FromKind == "bot" {
			out = append(out, m)
		}
	}
	return out
}

func (e *env) stats() sim.Stats {
	st, err := e.control().Stats(context.Background())
	e.must(err)
	return st
}

// updates fetches every pending update of a bot by polling (the test's
// stand-in for a session) and confirms them; it retries through chaos.
func (e *env) updates(bot BotSpec, want int) []buko.Update {
	e.t.Helper()
	tok, _ := e.tokens.Token(context.Background(), bot.ID)
	var got []buko.Update
	var offset buko.UpdateID
	deadline := time.Now().Add(60 * time.Second)
	for len(got) < want {
		if time.Now().After(deadline) {
			e.t.Fatalf("got %d updates of %d", len(got), want)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		us, err := e.api.GetUpdates(ctx, tok, buko.GetUpdatesParams{Offset: offset, Timeout: 1})
		cancel()
		if err != nil {
			if buko.IsRetryable(err) {
				continue
			}
			e.t.Fatalf("getUpdates: %v", err)
		}
		for _, u := range us {
			got = append(got, u)
			offset = u.UpdateID.Next()
		}
	}
	return got
}

func (e *env) hand(botID string, u buko.Update) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.handoff.Handoff(ctx, botID, u); err != nil {
		e.t.Fatalf("handoff of %s: %v", u.UpdateID, err)
	}
}

func (e *env) state(botID, chatID string) (StateView, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v, err := e.c.QueryWorkflow(ctx, WorkflowID(botID, chatID), "", QueryState)
	if err != nil {
		return StateView{}, err
	}
	var sv StateView
	err = v.Get(&sv)
	return sv, err
}

// waitLimit bounds the waits of the Temporal-backed tests (generous: one
// update's path crosses several workflows and activities).
const waitLimit = 2 * time.Minute

// ---- worker-side dependencies ----

type memTokens struct {
	mu          sync.Mutex
	m           map[string]vault.Token
	invalidated int
}

func (m *memTokens) set(botID string, t vault.Token) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.m[botID] = t
}

func (m *memTokens) Token(_ context.Context, botID string) (buko.Credential, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t, ok := m.m[botID]
	if !ok {
		return nil, fmt.Errorf("token of %s: %w", botID, ErrBotNotFound)
	}
	return t, nil
}

func (m *memTokens) Invalidate(string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.invalidated++
}

type memBots struct {
	mu sync.Mutex
	m  map[string]BotSpec
}

func (b *memBots) set(s BotSpec) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.m[s.ID] = s
}

func (b *memBots) Bot(_ context.Context, botID string) (BotSpec, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s, ok := b.m[botID]
	if !ok {
		return BotSpec{}, ErrBotNotFound
	}
	return s, nil
}

// memMarks is an in-memory ChatMarks (runner.ChatMarks is the Postgres one).
type memMarks struct {
	mu    sync.Mutex
	m     map[string]buko.UpdateID
	saves int
}

func (m *memMarks) LastHandled(_ context.Context, botID, chatID string) (buko.UpdateID, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.m[botID+"/"+chatID], nil
}

func (m *memMarks) SaveHandled(_ context.Context, botID, chatID string, id buko.UpdateID) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.saves++
	if cur := m.m[botID+"/"+chatID]; cur == "" || id.Compare(cur) > 0 {
		m.m[botID+"/"+chatID] = id
	}
	return nil
}
