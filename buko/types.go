// Package buko holds what agentrunner knows of the Buko Bot API: its wire types
// (updates, messages, Gateway frames, the getMe result), the REST client and the
// typed API error. It knows nothing of the runner. The simulator lives in buko/sim.
//
// Every identifier is a string on the wire, and stays one here. Unknown JSON
// fields are tolerated everywhere, so a newer Buko never breaks an older runner.
package buko

import "encoding/json"

// Chat types seen on the wire.
const (
	ChatPrivate = "private"
	ChatGroup   = "group"
)

// Chat member statuses carried by my_chat_member updates.
const (
	MemberMember = "member"
	MemberLeft   = "left"
	MemberKicked = "kicked"
)

// Chat actions accepted by sendChatAction.
const (
	ActionTyping         = "typing"
	ActionUploadPhoto    = "upload_photo"
	ActionUploadDocument = "upload_document"
	ActionRecordVoice    = "record_voice"
	ActionUploadVoice    = "upload_voice"
)

// ValidChatAction reports whether a is one of the documented chat actions.
func ValidChatAction(a string) bool {
	switch a {
	case ActionTyping, ActionUploadPhoto, ActionUploadDocument, ActionRecordVoice, ActionUploadVoice:
		return true
	}
	return false
}

// Limits stated by the spec.
const (
	MaxTextLen      = 5000          // characters (Unicode code points) in text and captions
	MaxPhotoBytes   = 20 << 20      // sendPhoto upload limit
	MaxDocumentSize = 50 << 20      // sendDocument upload limit
	MaxPollLimit    = 100           // getUpdates limit upper bound
	MaxPollTimeout  = 50            // getUpdates timeout upper bound, seconds
	ParseModePlain  = "plain"       // the only parse_mode Buko accepts
	EntityCommand   = "bot_command" // entity type of a /command
	EntityMention   = "mention"     // entity type of an @handle
	AuthScheme      = "Bot"         // Authorization: Bot <token>
	DefaultAPIURL   = "https://ims.buko.app"
	GatewayPath     = "/bot/ws"
)

// User is a message author as a bot sees it: ID is scoped to the bot.
type User struct {
	ID          string `json:"id"`
	IsBot       bool   `json:"is_bot"`
	DisplayName string `json:"display_name,omitempty"`
	Handle      string `json:"handle,omitempty"`
}

// Chat is a Buko space: a private bot DM or a group.
type Chat struct {
	ID    string `json:"id"`
	Type  string `json:"type"`
	Title string `json:"title,omitempty"`
}

// Entity marks a span of a message's text (offsets in UTF-16 code units, as Telegram).
type Entity struct {
	Type   string `json:"type"`
	Offset int    `json:"offset"`
	Length int    `json:"length"`
}

// PhotoSize is one stored rendition of a photo.
type PhotoSize struct {
	FileID   string `json:"file_id"`
	MimeType string `json:"mime_type,omitempty"`
	FileSize int64  `json:"file_size,omitempty"`
}

// Document is a stored file sent with sendDocument.
type Document struct {
	FileID   string `json:"file_id"`
	FileName string `json:"file_name,omitempty"`
	MimeType string `json:"mime_type,omitempty"`
	FileSize int64  `json:"file_size,omitempty"`
}

// Message is a chat message, in updates and as the result of send methods.
// Only MessageID and Chat are always present; the Gateway may send a reduced shape.
type Message struct {
	MessageID      string      `json:"message_id"`
	Date           int64       `json:"date,omitempty"`
	EditDate       int64       `json:"edit_date,omitempty"`
	Chat           Chat        `json:"chat"`
	From           *User       `json:"from,omitempty"`
	Text           string      `json:"text,omitempty"`
	Caption        string      `json:"caption,omitempty"`
	Entities       []Entity    `json:"entities,omitempty"`
	Photo          []PhotoSize `json:"photo,omitempty"`
	Document       *Document   `json:"document,omitempty"`
	ReplyToMessage *Message    `json:"reply_to_message,omitempty"`
}

// MemberStatus is one side of a my_chat_member change.
type MemberStatus struct {
	Status string `json:"status"`
}

// ChatMemberUpdated reports a change of the bot's membership of a chat.
type ChatMemberUpdated struct {
	Chat          Chat         `json:"chat"`
	From          *User        `json:"from,omitempty"`
	Date          int64        `json:"date,omitempty"`
	OldChatMember MemberStatus `json:"old_chat_member"`
	NewChatMember MemberStatus `json:"new_chat_member"`
}

// Update is one event delivered to a bot. Exactly one of the payload fields is
// set for the kinds this package knows; an update of an unknown kind has none,
// and Kind reports "".
type Update struct {
	UpdateID      UpdateID           `json:"update_id"`
	Message       *Message           `json:"message,omitempty"`
	EditedMessage *Message           `json:"edited_message,omitempty"`
	MyChatMember  *ChatMemberUpdated `json:"my_chat_member,omitempty"`
}

// Update kinds.
const (
	KindMessage       = "message"
	KindEditedMessage = "edited_message"
	KindMyChatMember  = "my_chat_member"
)

// Kind names the update's payload field, or "" if it carries none this package knows.
func (u *Update) Kind() string {
	switch {
	case u.Message != nil:
		return KindMessage
	case u.EditedMessage != nil:
		return KindEditedMessage
	case u.MyChatMember != nil:
		return KindMyChatMember
	}
	return ""
}

// ChatID returns the chat the update belongs to, or "" for an unknown kind.
func (u *Update) ChatID() string {
	switch {
	case u.Message != nil:
		return u.Message.Chat.ID
	case u.EditedMessage != nil:
		return u.EditedMessage.Chat.ID
	case u.MyChatMember != nil:
		return u.MyChatMember.Chat.ID
	}
	return ""
}

// Capabilities lists what the bot's tier allows.
type Capabilities struct {
	EditDeleteMessages bool `json:"edit_delete_messages"`
}

// Me is the result of getMe.
type Me struct {
	ID                     string       `json:"id"`
	IsBot                  bool         `json:"is_bot"`
	DisplayName            string       `json:"display_name"`
	Handle                 string       `json:"handle"`
	AvatarKey              *string      `json:"avatar_key"`
	Status                 string       `json:"status"`
	Verified               bool         `json:"verified"`
	Official               bool         `json:"official"`
	QuotaTier              string       `json:"quota_tier"`
	GatewayConnectionLimit int          `json:"gateway_connection_limit"`
	Capabilities           Capabilities `json:"capabilities"`
}

// Gateway frame types.
const (
	FrameUpdate = "update"
	FrameAck    = "ack"
	FramePing   = "ping"
	FramePong   = "pong"
)

// Frame is one Gateway WebSocket text frame. Type discriminates; Update is set
// for "update" frames and UpdateID for "ack" frames.
type Frame struct {
	Type     string   `json:"type"`
	Update   *Update  `json:"update,omitempty"`
	UpdateID UpdateID `json:"update_id,omitempty"`
}

// Envelope is the REST response wrapper: {"ok":true,"result":…} or the error fields.
type Envelope struct {
	OK          bool            `json:"ok"`
	Result      json.RawMessage `json:"result,omitempty"`
	ErrorCode   int             `json:"error_code,omitempty"`
	Code        string          `json:"code,omitempty"`
	Description string          `json:"description,omitempty"`
	RetryAfter  int             `json:"retry_after,omitempty"`
}
