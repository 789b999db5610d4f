package main

// output.go holds what the commands that print share: -o (people's format or
// JSON), --progress and its bar on stderr, and the registry a read or status
// command opens. Each command is its flags and calls to these.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/mattn/go-isatty"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"buko.app/agentrunner/runner"
)

// outputFlag is -o: a format for people ("table" or "text") or "json".
type outputFlag struct{ human, format string }

// bind adds -o with default human and its $AGENTRUNNER_OUTPUT.
func (o *outputFlag) bind(fs *pflag.FlagSet, human, help string) {
	o.human = human
	fs.StringVarP(&o.format, "output", "o", human, help)
	envFlag(fs, "output", "AGENTRUNNER_OUTPUT")
}

// check refuses a format other than the two.
func (o *outputFlag) check() error {
	if o.format != o.human && o.format != "json" {
		return usageError{fmt.Errorf("-o %q: want %s or json", o.format, o.human)}
	}
	return nil
}

func (o *outputFlag) json() bool { return o.format == "json" }

// print writes v as indented JSON with -o json; else human writes it.
func (o *outputFlag) print(w io.Writer, v any, human func(w io.Writer) error) error {
	if o.json() {
		return encodeJSONIndent(w, v)
	}
	return human(w)
}

func encodeJSONIndent(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// table writes a table of aligned columns: header, then what rows writes.
func table(w io.Writer, header string, rows func(tw io.Writer)) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	rows(tw)
	return tw.Flush()
}

// withRegistry opens Postgres and a registry that reads bots and changes
// their rows (no cipher, no Buko), runs fn with them, and closes them.
func withRegistry(ctx context.Context, g *globals, db *dbFlags, fn func(pool *pgxpool.Pool, reg *runner.Registry) error) error {
	pool, err := db.open(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	return fn(pool, runner.NewRegistry(runner.RegistryConfig{Pool: pool, Logger: g.log}))
}

// progressFlag is --progress: auto (a bar when stderr is a terminal),
// always or never.
type progressFlag struct{ mode string }

func (p *progressFlag) bind(fs *pflag.FlagSet) {
	fs.StringVar(&p.mode, "progress", "auto", "progress bar on stderr: auto (when a terminal), always or never")
}

// show reports whether to draw a bar on cmd's stderr.
func (p *progressFlag) show(cmd *cobra.Command) (bool, error) {
	switch p.mode {
	case "auto":
		f, ok := cmd.ErrOrStderr().(*os.File)
		return ok && isatty.IsTerminal(f.Fd()), nil
	case "always":
		return true, nil
	case "never":
		return false, nil
	}
	return false, usageError{fmt.Errorf("--progress %q: want auto, always or never", p.mode)}
}

// bar is the commands' one progress bar style, on w; a nil *bar draws nothing.
type bar struct {
	pb *progressbar.ProgressBar
	w  io.Writer
}

func newBar(w io.Writer, total int, what, unit string) *bar {
	return &bar{w: w, pb: progressbar.NewOptions(total,
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription(what),
		progressbar.OptionShowCount(),
		progressbar.OptionShowIts(),
		progressbar.OptionSetItsString(unit),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionSetWidth(30),
	)}
}

// Add counts n more steps done.
func (b *bar) Add(n int) error {
	if b == nil {
		return nil
	}
	return b.pb.Add(n)
}

// Set says done steps are done.
func (b *bar) Set(done int) {
	if b != nil {
		_ = b.pb.Set(done)
	}
}

// Exit ends the bar and its line.
func (b *bar) Exit() error {
	if b == nil {
		return nil
	}
	err := b.pb.Exit()
	fmt.Fprintln(b.w)
	return err
}
