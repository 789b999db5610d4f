package helm

import (
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// deploy/Dockerfile's shape is checked here, statically: its stages, the final
// image's user, labels and entrypoint, and the version stamping of
// deploy/rootfs.sh against cmd/agentrunner/version.go. deploy/image_test.go
// builds the final stage with podman and runs it.

type instruction struct {
	line int
	cmd  string // upper case: FROM, RUN, COPY, USER, …
	args string
}

type stage struct {
	base, name string
	instrs     []instruction
}

// parseDockerfile splits a Dockerfile into global ARGs and stages. It handles
// comments, blank lines and backslash continuations (enough for our file).
func parseDockerfile(src string) (globals []instruction, stages []stage, err error) {
	var cur strings.Builder
	start := 0
	flush := func(line int) error {
		text := strings.TrimSpace(cur.String())
		cur.Reset()
		if text == "" {
			return nil
		}
		cmd, args, _ := strings.Cut(text, " ")
		in := instruction{line: line, cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args)}
		if in.cmd == "FROM" {
			f := strings.Fields(in.args)
			for len(f) > 0 && strings.HasPrefix(f[0], "--") {
				f = f[1:]
			}
			st := stage{}
			switch {
			case len(f) == 1:
				st.base = f[0]
			case len(f) == 3 && strings.EqualFold(f[1], "AS"):
				st.base, st.name = f[0], f[2]
			default:
				return fmt.Errorf("line %d: cannot read FROM %q", line, in.args)
			}
			stages = append(stages, st)
			return nil
		}
		if len(stages) == 0 {
			if in.cmd != "ARG" {
				return fmt.Errorf("line %d: %s before the first FROM", line, in.cmd)
			}
			globals = append(globals, in)
			return nil
		}
		stages[len(stages)-1].instrs = append(stages[len(stages)-1].instrs, in)
		return nil
	}
	for i, raw := range strings.Split(src, "\n") {
		l := strings.TrimSpace(raw)
		if strings.HasPrefix(l, "#") || (l == "" && cur.Len() == 0) {
			continue
		}
		if cur.Len() == 0 {
			start = i + 1
		}
		if strings.HasSuffix(l, "\\") {
			cur.WriteString(strings.TrimSuffix(l, "\\") + " ")
			continue
		}
		cur.WriteString(l)
		if err := flush(start); err != nil {
			return nil, nil, err
		}
	}
	if cur.Len() > 0 {
		return nil, nil, fmt.Errorf("line %d: continuation at end of file", start)
	}
	return globals, stages, nil
}

// argDefaults reads ARG NAME=default instructions.
func argDefaults(ins []instruction) map[string]string {
	m := map[string]string{}
	for _, in := range ins {
		if in.cmd != "ARG" {
			continue
		}
		for _, f := range strings.Fields(in.args) {
			k, v, _ := strings.Cut(f, "=")
			m[k] = strings.Trim(v, `"`)
		}
	}
	return m
}

func expandArgs(s string, args map[string]string) string {
	return os.Expand(s, func(k string) string { return args[k] })
}

// execForm decodes a JSON-array (exec form) argument; ok is false for shell form.
func execForm(args string) ([]string, bool) {
	var v []string
	if err := json.Unmarshal([]byte(args), &v); err != nil || len(v) == 0 {
		return nil, false
	}
	return v, true
}

func TestDockerfile(t *testing.T) {
	root := repoRoot(t)
	raw, err := os.ReadFile(filepath.Join(root, "deploy", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	globals, stages, err := parseDockerfile(string(raw))
	if err != nil {
		t.Fatalf("deploy/Dockerfile: %v", err)
	}
	if len(stages) < 2 {
		t.Fatalf("want a multi-stage build, got %d stage(s)", len(stages))
	}
	gargs := argDefaults(globals)
	final := stages[len(stages)-1]

	// The final stage: a minimal non-root base, no RUN (there is no shell), the
	// binary copied from the build stage, exec-form entrypoint, numeric non-root USER.
	base := expandArgs(final.base, gargs)
	distroless := regexp.MustCompile(`^gcr\.io/distroless/static(-debian\d+)?:(nonroot|latest)`).MatchString(base)
	if !distroless && base != "scratch" {
		t.Errorf("final stage FROM %s: want gcr.io/distroless/static…:nonroot or scratch", base)
	}
	var from, copySrc, copyDst string
	var user string
	var entrypoint, cmd []string
	for _, in := range final.instrs {
		switch in.cmd {
		case "RUN":
			t.Errorf("line %d: RUN in the final stage (it must not need a shell)", in.line)
		case "USER":
			user = in.args
		case "COPY":
			f := strings.Fields(in.args)
			for _, a := range f {
				if v, ok := strings.CutPrefix(a, "--from="); ok {
					from = v
					copySrc, copyDst = f[len(f)-2], f[len(f)-1]
				}
			}
		case "ENTRYPOINT":
			v, ok := execForm(in.args)
			if !ok {
				t.Errorf("line %d: ENTRYPOINT %s is shell form (needs /bin/sh); use the JSON exec form", in.line, in.args)
			}
			entrypoint = v
		case "CMD":
			v, ok := execForm(in.args)
			if !ok {
				t.Errorf("line %d: CMD %s is shell form; use the JSON exec form", in.line, in.args)
			}
			cmd = v
		case "SHELL":
			t.Errorf("line %d: SHELL in the final stage", in.line)
		}
	}
	uid, _, _ := strings.Cut(user, ":")
	if n, err := strconv.Atoi(uid); err != nil || n == 0 {
		t.Errorf("final stage USER %q: want a numeric non-root uid (65532), so runAsNonRoot can verify it", user)
	}
	if len(entrypoint) == 0 {
		t.Fatal("final stage has no ENTRYPOINT")
	}
	for _, a := range append(slices.Clone(entrypoint), cmd...) {
		if regexp.MustCompile(`(^|/)(sh|bash|ash|dash)$`).MatchString(a) {
			t.Errorf("entrypoint/cmd %v runs a shell", append(entrypoint, cmd...))
		}
	}
	if !slices.Equal(cmd, []string{"serve"}) {
		t.Errorf("CMD %v, want [serve] (the chart passes args explicitly)", cmd)
	}
	// The final stage copies the build stage's whole /out/ tree to /, the tree
	// that deploy/rootfs.sh assembles (and `make image` feeds in its place).
	if copySrc != "/out/" || copyDst != "/" {
		t.Errorf("final stage COPY --from=%s %s %s, want /out/ /", from, copySrc, copyDst)
	}
	labels := map[string]bool{}
	for _, in := range final.instrs {
		if in.cmd == "LABEL" {
			for _, m := range regexp.MustCompile(`(org\.opencontainers\.image\.[a-z]+)=`).FindAllStringSubmatch(in.args, -1) {
				labels[m[1]] = true
			}
		}
	}
	for _, l := range []string{"title", "source", "version", "revision", "created"} {
		if !labels["org.opencontainers.image."+l] {
			t.Errorf("final stage has no LABEL org.opencontainers.image.%s", l)
		}
	}

	// The build stage: golang 1.26, running deploy/rootfs.sh /out with the stamps.
	var build *stage
	for i := range stages[:len(stages)-1] {
		if stages[i].name == from {
			build = &stages[i]
		}
	}
	if build == nil {
		t.Fatalf("final stage copies --from=%q, which is not an earlier stage", from)
	}
	if b := expandArgs(build.base, gargs); !strings.HasPrefix(b, "golang:1.26") {
		t.Errorf("build stage FROM %s, want golang:1.26", b)
	}
	var runRootfs string
	for _, in := range build.instrs {
		if in.cmd == "RUN" && strings.Contains(in.args, "deploy/rootfs.sh") {
			runRootfs = in.args
		}
	}
	if runRootfs == "" {
		t.Fatal("build stage has no RUN … deploy/rootfs.sh")
	}
	for _, want := range []string{"deploy/rootfs.sh /out", "VERSION=${VERSION}", "COMMIT=${COMMIT}", "DATE=${DATE}"} {
		if !strings.Contains(runRootfs, want) {
			t.Errorf("build stage's rootfs.sh line lacks %q:\n%s", want, runRootfs)
		}
	}
	bargs := argDefaults(build.instrs)
	for _, a := range []string{"VERSION", "COMMIT", "DATE"} {
		if _, ok := bargs[a]; !ok {
			t.Errorf("build stage does not declare ARG %s", a)
		}
	}

	// deploy/rootfs.sh: a static, stamped binary at the ENTRYPOINT's path.
	script, err := os.ReadFile(filepath.Join(root, "deploy", "rootfs.sh"))
	if err != nil {
		t.Fatal(err)
	}
	goBuild := ""
	for _, l := range strings.Split(strings.ReplaceAll(string(script), "\\\n", " "), "\n") {
		if strings.Contains(l, "go build") {
			goBuild = l
		}
	}
	if goBuild == "" {
		t.Fatal("deploy/rootfs.sh has no go build")
	}
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "./cmd/agentrunner",
		"-X main.version=${VERSION", "-X main.commit=${COMMIT", "-X main.date=${DATE"} {
		if !strings.Contains(goBuild, want) {
			t.Errorf("rootfs.sh's go build lacks %q:\n%s", want, goBuild)
		}
	}
	if m := regexp.MustCompile(`-o\s+"?\$out(\S+?)"?(\s|$)`).FindStringSubmatch(goBuild); m == nil {
		t.Error(`rootfs.sh's go build has no -o "$out/…"`)
	} else if m[1] != entrypoint[0] {
		t.Errorf("ENTRYPOINT %s, but rootfs.sh writes the binary to $out%s", entrypoint[0], m[1])
	}

	// The -X targets must be package-level string variables of package main.
	checkStampVars(t, filepath.Join(root, "cmd", "agentrunner", "version.go"), "version", "commit", "date")
}

func checkStampVars(t *testing.T, file string, names ...string) {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), file, nil, 0)
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	if f.Name.Name != "main" {
		t.Errorf("%s is package %s, want main (-X main.…)", file, f.Name.Name)
	}
	found := map[string]bool{}
	for _, d := range f.Decls {
		gd, ok := d.(*ast.GenDecl)
		if !ok || gd.Tok != token.VAR {
			continue
		}
		for _, s := range gd.Specs {
			vs := s.(*ast.ValueSpec)
			for _, n := range vs.Names {
				found[n.Name] = true
			}
		}
	}
	for _, n := range names {
		if !found[n] {
			t.Errorf("%s has no package-level var %s: -X main.%s would stamp nothing", file, n, n)
		}
	}
}

func TestParseDockerfileRejectsShellEntrypoint(t *testing.T) {
	_, stages, err := parseDockerfile("FROM golang:1.26 AS build\nRUN go build \\\n  -o /x .\nFROM scratch\nENTRYPOINT /x serve\n")
	if err != nil {
		t.Fatal(err)
	}
	if len(stages) != 2 || stages[0].name != "build" || !strings.Contains(stages[0].instrs[0].args, "-o /x") {
		t.Fatalf("parsed %+v", stages)
	}
	if _, ok := execForm(stages[1].instrs[0].args); ok {
		t.Error("shell-form ENTRYPOINT read as exec form")
	}
}
