package main

// agentrunner codec: the operator's side of the payload codec: create and
// rotate payload keys, decode workflow histories, serve a codec endpoint for
// the Temporal CLI and Web UI, and seal agent secrets for bots.agent_config.

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"go.temporal.io/sdk/converter"

	"buko.app/agentrunner/vault"
	"buko.app/agentrunner/workflows"
	"buko.app/agentrunner/workflows/codec"
)

func newCodecCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "codec",
		Short: "Payload encryption of workflow histories: keys, decoding, codec server, agent secrets",
		Long: `Workflow payloads (updates, user text, agent replies, failure messages) are
encrypted with AES-256-GCM before they reach Temporal. The keys live in a
payload key file; each key is wrapped by the token cipher (the local keyring
or Vault Transit), so the file alone decrypts nothing.`,
	}
	cmd.AddCommand(newCodecNewKeyCmd(g), newCodecDecodeCmd(g), newCodecServeCmd(g), newCodecSealSecretCmd(g))
	return cmd
}

// codecFlags are what every codec subcommand needs.
type codecFlags struct {
	cipher   cipherFlags
	temporal temporalFlags
}

func (c *codecFlags) bind(cmd *cobra.Command) {
	fs := cmd.Flags()
	c.cipher.bind(fs)
	fs.StringVar(&c.temporal.keysFile, "payload-keys", "", "payload key `file` (default $XDG_DATA_HOME/agentrunner/payload-keys.json)")
	envFlag(fs, "payload-keys", "AGENTRUNNER_PAYLOAD_KEYS")
}

// keyring loads the keys, opening the cipher only if a key is wrapped.
func (c *codecFlags) keyring(ctx context.Context, g *globals) (*codec.Keyring, func(), error) {
	u := &lazyUnwrapper{open: func(ctx context.Context) (vault.Cipher, error) { return c.cipher.open(ctx, g.log, nil) }}
	kr, err := c.temporal.loadKeys(ctx, u)
	if err != nil {
		u.close()
		return nil, nil, err
	}
	return kr, u.close, nil
}

func newCodecNewKeyCmd(g *globals) *cobra.Command {
	var (
		f   codecFlags
		id  string
		raw bool
	)
	cmd := &cobra.Command{
		Use:   "new-key",
		Short: "Add a new payload key and make it current (creates the key file if needed)",
		Long: `Generate a new 256-bit payload key, wrap it with the token cipher, add it to the
payload key file and make it the key new payloads are sealed with. Older keys
stay in the file so existing histories keep decrypting. Every worker and serve
replica must read the same file: distribute it before restarting them.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path, err := f.temporal.keysPath()
			if err != nil {
				return usageError{err}
			}
			kf := codec.KeyFile{Keys: map[string]string{}}
			if data, err := os.ReadFile(path); err == nil {
				if kf, err = codec.ParseKeyFile(data); err != nil {
					return err
				}
			} else if !errors.Is(err, os.ErrNotExist) {
				return err
			}
			if id == "" {
				id = "k" + time.Now().UTC().Format("20060102T150405")
			}
			if _, dup := kf.Keys[id]; dup {
				return usageError{fmt.Errorf("--id %s: the key file already has that key", id)}
			}
			key, err := codec.GenerateKey()
			if err != nil {
				return err
			}
			var stored string
			if raw {
				stored = codec.RawPrefix + base64.StdEncoding.EncodeToString(key)
			} else {
				ci, err := f.cipher.open(cmd.Context(), g.log, nil)
				if err != nil {
					return err
				}
				defer func() { _ = ci.Cleanup() }()
				if stored, err = workflows.WrapCodecKey(cmd.Context(), ci, key); err != nil {
					return err
				}
			}
			kf.Keys[id] = stored
			kf.Current = id
			if err := codec.WriteKeyFile(path, kf); err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s\n", id)
			g.log.Info().Str("key_id", id).Str("file", path).Int("keys", len(kf.Keys)).Msg("payload key added and made current")
			return err
		},
	}
	f.bind(cmd)
	cmd.Flags().StringVar(&id, "id", "", "id of the new key (default k<UTC timestamp>)")
	cmd.Flags().BoolVar(&raw, "raw", false, "store the key unwrapped (tests and throwaway dev setups only)")
	return cmd
}

func newCodecDecodeCmd(g *globals) *cobra.Command {
	var f codecFlags
	cmd := &cobra.Command{
		Use:   "decode [FILE]",
		Short: "Decrypt the payloads of a workflow history (JSON from `temporal workflow show -o json`)",
		Long: `Read JSON holding Temporal payloads (a history from "temporal workflow show
--output json", or any document with payload objects) from FILE or stdin and
print it with every encrypted payload opened. The output holds user text:
handle it as personal data.`,
		Example: `  temporal workflow show -w chat/bot_1/spc_2 -o json | agentrunner codec decode`,
		Args:    cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var in io.Reader = cmd.InOrStdin()
			if len(args) == 1 && args[0] != "-" {
				fh, err := os.Open(args[0])
				if err != nil {
					return usageError{err}
				}
				defer fh.Close()
				in = fh
			}
			kr, closeFn, err := f.keyring(cmd.Context(), g)
			if err != nil {
				return err
			}
			defer closeFn()
			return codec.DecodeJSON(in, cmd.OutOrStdout(), codec.New(kr))
		},
	}
	f.bind(cmd)
	return cmd
}

func newCodecServeCmd(g *globals) *cobra.Command {
	var (
		f    codecFlags
		addr string
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve a codec endpoint for `temporal --codec-endpoint` and the Temporal Web UI",
		Long: `Serve the payload codec over HTTP (POST /encode, POST /decode) so the Temporal
CLI (--codec-endpoint http://ADDR) and Web UI can show decrypted payloads.
Anyone who reaches the address can decrypt: keep it on loopback or behind
authentication.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			kr, closeFn, err := f.keyring(cmd.Context(), g)
			if err != nil {
				return err
			}
			defer closeFn()
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				return fmt.Errorf("listen on %s: %w", addr, err)
			}
			srv := &http.Server{Handler: converter.NewPayloadCodecHTTPHandler(codec.New(kr)), ReadHeaderTimeout: 10 * time.Second}
			g.log.Info().Str("addr", "http://"+ln.Addr().String()).Msg("codec endpoint listening")
			return serveUntilDone(cmd.Context(), srv, ln, 5*time.Second, nil)
		},
	}
	f.bind(cmd)
	cmd.Flags().StringVar(&addr, "addr", "127.0.0.1:8089", "address to listen on")
	envFlag(cmd.Flags(), "addr", "AGENTRUNNER_CODEC_ADDR")
	return cmd
}

func newCodecSealSecretCmd(g *globals) *cobra.Command {
	var (
		f     codecFlags
		botID string
	)
	cmd := &cobra.Command{
		Use:   "seal-secret --bot-id BOT",
		Short: "Seal an agent secret (API key, HMAC secret) read from stdin for bots.agent_config",
		Long: `Read a secret from stdin (one line) and print a reference sealed by the token
cipher and bound to the bot: put it in the bot's agent_config ("secret" of the
http agent, "api_key" of the openai agent). Only that bot's worker opens it.`,
		Example: `  printf %s "$OPENAI_API_KEY" | agentrunner codec seal-secret --bot-id bot_01J...`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if botID == "" {
				return usageError{errors.New("--bot-id is required")}
			}
			data, err := io.ReadAll(io.LimitReader(cmd.InOrStdin(), 4096))
			if err != nil {
				return err
			}
			secret := strings.TrimRight(string(data), "\r\n")
			if secret == "" {
				return usageError{errors.New("no secret on stdin")}
			}
			ci, err := f.cipher.open(cmd.Context(), g.log, nil)
			if err != nil {
				return err
			}
			defer func() { _ = ci.Cleanup() }()
			ref, err := workflows.SealSecret(cmd.Context(), ci, botID, secret)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), ref)
			return err
		},
	}
	f.bind(cmd)
	cmd.Flags().StringVar(&botID, "bot-id", "", "the bot the secret belongs to")
	return cmd
}
