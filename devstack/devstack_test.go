package devstack

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rs/zerolog"

	"buko.app/agentrunner/internal/testsupport"
	"buko.app/agentrunner/migrations/pgtest"
	"buko.app/agentrunner/vault"
	"buko.app/agentrunner/workflows/codec"
)

func TestMain(m *testing.M) { testsupport.Main(m) }

func TestEnsureAdminTokenMakesOneAndKeepsIt(t *testing.T) {
	dir := t.TempDir()
	var logs bytes.Buffer
	path, err := EnsureAdminToken(dir, zerolog.New(&logs))
	if err != nil || path != AdminTokenPath(dir) {
		t.Fatalf("%q %v", path, err)
	}
	first, err := os.ReadFile(path)
	if err != nil || len(bytes.TrimSpace(first)) < 40 {
		t.Fatalf("token file: %q %v", first, err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", fi.Mode())
	}
	if strings.Contains(logs.String(), strings.TrimSpace(string(first))) {
		t.Fatal("the token was logged")
	}
	if _, err := EnsureAdminToken(dir, zerolog.Nop()); err != nil {
		t.Fatal(err)
	}
	if again, _ := os.ReadFile(path); !bytes.Equal(again, first) {
		t.Fatal("a second run replaced the token")
	}
}

func TestEnsurePayloadKeysMakesAWrappedKeyOnce(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	ci, err := vault.Open(ctx, vault.Config{Cipher: vault.KindLocal, Keyring: filepath.Join(dir, "keyring"), Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ci.Cleanup() })
	path := filepath.Join(dir, "sub", "payload-keys.json")
	if err := EnsurePayloadKeys(ctx, path, ci, zerolog.Nop()); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	kf, err := codec.ParseKeyFile(data)
	if err != nil || len(kf.Keys) != 1 || strings.HasPrefix(kf.Keys[kf.Current], codec.RawPrefix) {
		t.Fatalf("want one wrapped key: %+v %v", kf, err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", fi.Mode())
	}
	if err := EnsurePayloadKeys(ctx, path, ci, zerolog.Nop()); err != nil {
		t.Fatal(err)
	}
	if again, _ := os.ReadFile(path); !bytes.Equal(again, data) {
		t.Fatal("a second run replaced the key file")
	}
}

func TestEnsureDatabaseCreatesAMissingOne(t *testing.T) {
	dsn := pgtest.NewEmpty(t) // the server answers; a database of our own to drop
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatalf("pgtest gave a DSN that is not a URL: %v", err)
	}
	name := "agentrunner_devstack_" + testsupport.RandHex(6)
	u.Path = "/" + name
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), dsn)
		if err == nil {
			_, _ = c.Exec(context.Background(), "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
			_ = c.Close(context.Background())
		}
	})
	ctx := context.Background()
	for range 2 { // the second run finds it
		got, err := EnsureDatabase(ctx, u.String(), zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		c, err := pgx.Connect(ctx, got)
		if err != nil {
			t.Fatalf("connect to the database made: %v", err)
		}
		_ = c.Close(ctx)
	}
}

func TestEnsureDatabaseRefusesBadURLs(t *testing.T) {
	for _, tc := range []struct{ url, want string }{
		{"mysql://u:pw@h/db", `--database-url "mysql://u:xxxxx@h/db": want a postgres:// URL`},
		{"postgres://h:5432/", "--database-url: name a database"},
		{"::", "want a postgres:// URL"},
	} {
		_, err := EnsureDatabase(context.Background(), tc.url, zerolog.Nop())
		var se *SettingError
		if !errors.As(err, &se) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: want a SettingError containing %q, got %v", tc.url, tc.want, err)
		}
	}
}

func TestFreePortTakesAnotherWhenTaken(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	taken := ln.Addr().(*net.TCPAddr).Port
	ports, err := freePorts(taken, 0)
	if err != nil || ports[0] == taken || ports[0] == 0 || ports[1] == 0 {
		t.Fatalf("%v %v (taken %d)", ports, err, taken)
	}
}

func TestTemporalWithoutCLIIsASettingError(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	stop, _, err := Temporal{DataDir: t.TempDir(), Namespace: "default"}.Start(context.Background(), zerolog.Nop())
	var se *SettingError
	if stop != nil || !errors.As(err, &se) || !strings.Contains(err.Error(), "AGENTRUNNER_TEMPORAL_BIN") {
		t.Fatalf("want a SettingError naming AGENTRUNNER_TEMPORAL_BIN, got %v", err)
	}
}

func TestTemporalThatExitsAtStartIsRetriedThenReported(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "temporal")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\nexit 3\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	stop, _, err := Temporal{Bin: bin, DataDir: dir, Namespace: "default"}.Start(context.Background(), zerolog.Nop())
	if stop == nil {
		t.Fatal("no stop for a started process")
	}
	stop()
	if !errors.Is(err, errTemporalExited) || !strings.Contains(err.Error(), filepath.Join(dir, "temporal.log")) {
		t.Fatalf("want errTemporalExited naming the log, got %v", err)
	}
	t.Logf("three attempts in %s", time.Since(start).Round(time.Millisecond))
}

func TestSimulatorAndExampleAgentStartAndStop(t *testing.T) {
	apiURL, stop, err := StartSimulator("127.0.0.1:0", zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	stop()
	if _, err := net.DialTimeout("tcp", strings.TrimPrefix(apiURL, "http://"), time.Second); err == nil {
		t.Errorf("the simulator still answers at %s", apiURL)
	}
	a, err := StartExampleAgent()
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Secret) != 32 || !strings.HasSuffix(a.URL, "/agent") {
		t.Fatalf("%+v", a)
	}
	a.Close()
}

func TestBannerSaysWhereEverythingIs(t *testing.T) {
	var w bytes.Buffer
	Banner{APIURL: "http://127.0.0.1:8081", AdminAddr: "127.0.0.1:8080", AdminTokenFile: "/d/admin-token",
		TemporalAddr: "127.0.0.1:" + strconv.Itoa(DefaultTemporalPort), Namespace: "default", TaskQueue: "q", Database: "postgres://h/db",
		Chats: []Chat{{Handle: EchoHandle, BotID: "bot_1", ChatID: "chat_1", Agent: "echo"}}}.Write(&w)
	for _, want := range []string{"chat here:   http://127.0.0.1:8081/", `pick "Demo User"`, "look here:   http://127.0.0.1:8080/",
		"admin token: /d/admin-token", "Temporal:    127.0.0.1:7243 (namespace default, task queue q)", "bot @echo_bot (echo): bot_id bot_1, chat chat_1"} {
		if !strings.Contains(w.String(), want) {
			t.Errorf("banner lacks %q:\n%s", want, w.String())
		}
	}
	w.Reset()
	Banner{APIURL: "https://api.buko.example", External: true}.Write(&w)
	if !strings.Contains(w.String(), "(BUKO_API_URL; nothing seeded)") || strings.Contains(w.String(), "chat here") {
		t.Errorf("external banner:\n%s", w.String())
	}
}
