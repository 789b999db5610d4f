package main

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// envAnnotation is the flag annotation that names a flag's environment variable.
const envAnnotation = "agentrunner_env"

// globals holds what every subcommand shares: the logger and its settings.
type globals struct {
	logLevel  string
	logFormat string
	log       zerolog.Logger
}

func (g *globals) bindLogFlags(root *cobra.Command) {
	f := root.PersistentFlags()
	f.StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	f.StringVar(&g.logFormat, "log-format", "auto", "log format: console, json, or auto (console on a terminal, JSON otherwise)")
	envFlag(f, "log-level", "AGENTRUNNER_LOG_LEVEL")
	envFlag(f, "log-format", "AGENTRUNNER_LOG_FORMAT")
}

// setupLogging builds the one logger of the process; subcommands take it from g.log.
func (g *globals) setupLogging(w io.Writer) error {
	lvl, err := zerolog.ParseLevel(strings.ToLower(g.logLevel))
	if err != nil || lvl == zerolog.NoLevel {
		return fmt.Errorf("--log-level %q: want debug, info, warn or error", g.logLevel)
	}
	tty := false
	if f, ok := w.(*os.File); ok {
		tty = isatty.IsTerminal(f.Fd())
	}
	// Many goroutines log at once; the writer a caller hands us need not be safe for that.
	w = zerolog.SyncWriter(w)
	out := w
	switch g.logFormat {
	case "json":
	case "console":
		out = zerolog.ConsoleWriter{Out: w, TimeFormat: "15:04:05.000"}
	case "auto":
		if tty {
			out = zerolog.ConsoleWriter{Out: w, TimeFormat: "15:04:05.000"}
		}
	default:
		return fmt.Errorf("--log-format %q: want console, json or auto", g.logFormat)
	}
	g.log = zerolog.New(out).Level(lvl).With().Timestamp().Logger()
	return nil
}

// envFlag ties flag name in fs to environment variable env and says so in its help.
func envFlag(fs *pflag.FlagSet, name, env string) {
	fl := fs.Lookup(name)
	if fl == nil {
		panic("envFlag: no flag " + name) // programming error, caught by any test that builds the command tree
	}
	fl.Usage += " [$" + env + "]"
	_ = fs.SetAnnotation(name, envAnnotation, []string{env})
}

// applyEnv sets every flag of cmd that was not given on the command line from
// its environment variable, if that is set. A bad value names the variable.
func applyEnv(cmd *cobra.Command) error {
	var firstErr error
	visit := func(fl *pflag.Flag) {
		envs := fl.Annotations[envAnnotation]
		if firstErr != nil || fl.Changed || len(envs) == 0 {
			return
		}
		v, ok := os.LookupEnv(envs[0])
		if !ok {
			return
		}
		if err := fl.Value.Set(v); err != nil {
			firstErr = fmt.Errorf("$%s=%q: %w", envs[0], v, err)
			return
		}
		fl.Changed = true
	}
	cmd.Flags().VisitAll(visit)
	cmd.InheritedFlags().VisitAll(visit)
	return firstErr
}

// readTokenFile reads a bearer token from the file a flag names, trimmed of
// surrounding space; an unreadable or empty file is a usage error naming the
// flag (never the token).
func readTokenFile(flag, path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", usageError{fmt.Errorf("%s: %w", flag, err)}
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", usageError{fmt.Errorf("%s %s is empty", flag, path)}
	}
	return tok, nil
}
