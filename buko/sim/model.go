package sim

import (
	"crypto/hmac"
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/base64"
	"encoding/binary"
	"math/rand/v2"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"buko.app/agentrunner/buko"
)

// Connection policies at a bot's gateway_connection_limit.
const (
	PolicyRejectNew     = "reject_new"
	PolicyReplaceOldest = "replace_oldest"
)

// model is the simulated Buko: bots, users, chats and their messages. All of
// it is guarded by Server.mu, except each bot's delivery state (bot.mu).
type model struct {
	rng      *rand.Rand // ids; seeded by Options.Seed
	seed     uint64
	scopeKey []byte // HMAC key of bot-scoped user ids

	bots     map[string]*bot
	botList  []*bot
	byToken  map[[32]byte]*bot // sha256(token) → bot: Buko keeps only token hashes
	handles  map[string]string // lower-case handle → bot or user id (one namespace)
	users    map[string]*user
	userList []*user
	chats    map[string]*chat
	chatList []*chat
	private  map[[2]string]*chat // (user id, bot id) → private chat
	files    map[string]*file    // file_id → uploaded media
}

func (m *model) init(seed uint64) {
	m.seed = seed
	m.rng = rand.New(rand.NewPCG(seed, 0x5eed_0001))
	var k [8]byte
	binary.LittleEndian.PutUint64(k[:], seed)
	sum := sha256.Sum256(append([]byte("buko-sim scoped user ids\x00"), k[:]...))
	m.scopeKey = sum[:]
	m.bots = make(map[string]*bot)
	m.byToken = make(map[[32]byte]*bot)
	m.handles = make(map[string]string)
	m.users = make(map[string]*user)
	m.chats = make(map[string]*chat)
	m.private = make(map[[2]string]*chat)
	m.files = make(map[string]*file)
}

var idEncoding = base32.NewEncoding("0123456789abcdefghjkmnpqrstvwxyz").WithPadding(base32.NoPadding)

// newID returns prefix + 16 characters from the seeded generator.
func (m *model) newID(prefix string) string {
	var b [10]byte
	binary.LittleEndian.PutUint64(b[:8], m.rng.Uint64())
	binary.LittleEndian.PutUint16(b[8:], uint16(m.rng.Uint32()))
	return prefix + idEncoding.EncodeToString(b[:])
}

// newToken returns a fresh random bot token and its hash.
func newToken() (string, [32]byte) {
	var b [32]byte
	_, _ = crand.Read(b[:]) // crypto/rand.Read never fails on Linux
	tok := "bot_" + base64.RawURLEncoding.EncodeToString(b[:])
	return tok, sha256.Sum256([]byte(tok))
}

// scopedUserID is the user's id as one bot sees it: stable for the pair,
// different for every bot, not reversible without the simulator's key.
func (m *model) scopedUserID(b *bot, u *user) string {
	mac := hmac.New(sha256.New, m.scopeKey)
	mac.Write([]byte(b.id))
	mac.Write([]byte{0})
	mac.Write([]byte(u.id))
	return "su_" + idEncoding.EncodeToString(mac.Sum(nil)[:12])
}

// handleRE is the form of bot and user handles.
var handleRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_]{2,31}$`)

// profile is a bot's settings, guarded by Server.mu.
type profile struct {
	displayName string
	tier        string
	official    bool
	connLimit   int
	policy      string
}

// bot is one simulated bot. id, handle and num never change.
type bot struct {
	id     string
	handle string
	num    uint64

	prof      profile  // guarded by Server.mu
	tokenHash [32]byte // guarded by Server.mu

	mu sync.Mutex // guards everything below
	// Update log: updates with ids above acked, ascending.
	idRand   *rand.PCG
	lastID   uint64 // the last update id created
	log      []entry
	acked    uint64        // the cursor: every id ≤ acked is confirmed (ack or offset)
	sentMax  uint64        // the highest id ever handed out (Gateway or getUpdates)
	pollWake chan struct{} // closed and replaced on each new update and Gateway open
	conns    []*gwConn     // open sockets, oldest first; closing ones are removed at once

	msgQuota, pollQuota, actionQuota, attemptQuota window
}

// entry is one unconfirmed update: its frame as sent on the Gateway
// ({"type":"update","update":…}); getUpdates answers the inner object.
type entry struct {
	id        uint64
	frame     []byte
	delivered bool
}

type user struct {
	id          string
	displayName string
	handle      string
}

// chat is a Buko space: a private bot chat or a group.
type chat struct {
	id      string
	typ     string // buko.ChatPrivate or buko.ChatGroup
	title   string
	created int64

	// Private chats: the user, the bot and the bot's status in the chat
	// (member after /start, left after stop, kicked after a block).
	user   *user
	bot    *bot
	status string

	// Groups: current members.
	users []*user
	bots  []*bot

	msgs    []*message // msgs[i].seq == i+1; deleted ones stay, flagged
	actions map[*bot]chatAction
}

type chatAction struct {
	action  string
	expires time.Time
}

// message is one message of a chat; exactly one of user and bot is set.
type message struct {
	seq      uint64
	id       string
	user     *user
	bot      *bot
	text     string
	caption  string
	entities []buko.Entity
	targets  []string // lower-case handles the text addresses (/cmd@h, @h)
	replyTo  *message
	date     int64
	editDate int64
	photo    []buko.PhotoSize
	doc      *buko.Document
	deleted  bool
	seenBy   []*bot // bots that got it as an update
}

type file struct {
	data []byte
	mime string
	name string
}

func (c *chat) wire() buko.Chat {
	return buko.Chat{ID: c.id, Type: c.typ, Title: c.title}
}

// message returns the live message with the given id, or nil.
func (c *chat) message(id string) *message {
	seq, err := strconv.ParseUint(id, 10, 64)
	if err != nil || seq == 0 || seq > uint64(len(c.msgs)) || strconv.FormatUint(seq, 10) != id {
		return nil
	}
	m := c.msgs[seq-1]
	if m.deleted {
		return nil
	}
	return m
}

func (c *chat) append(m *message) {
	m.seq = uint64(len(c.msgs)) + 1
	m.id = strconv.FormatUint(m.seq, 10)
	c.msgs = append(c.msgs, m)
}

func (c *chat) hasUser(u *user) bool {
	if c.typ == buko.ChatPrivate {
		return c.user == u
	}
	for _, x := range c.users {
		if x == u {
			return true
		}
	}
	return false
}

func (c *chat) hasBot(b *bot) bool {
	if c.typ == buko.ChatPrivate {
		return c.bot == b
	}
	for _, x := range c.bots {
		if x == b {
			return true
		}
	}
	return false
}

func removeBot(list []*bot, b *bot) []*bot {
	for i, x := range list {
		if x == b {
			return append(list[:i:i], list[i+1:]...)
		}
	}
	return list
}

func removeUser(list []*user, u *user) []*user {
	for i, x := range list {
		if x == u {
			return append(list[:i:i], list[i+1:]...)
		}
	}
	return list
}

func lower(s string) string { return strings.ToLower(s) }
