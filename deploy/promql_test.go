package deploy

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// A small PromQL reader: enough to find the metric names, label matchers and
// grouping labels of the expressions in the rules and the dashboard. promtool
// checks the syntax; this only has to find names without missing any.

type matcher struct{ label, op, value string }

type ref struct {
	name     string
	matchers []matcher
}

// keywords that look like identifiers but are not metric names.
var promqlKeywords = map[string]bool{
	"and": true, "or": true, "unless": true, "bool": true, "offset": true, "by": true, "without": true,
	"on": true, "ignoring": true, "group_left": true, "group_right": true, "inf": true, "nan": true, "atan2": true,
	// aggregation operators, which may be followed by a by/without clause before their '('
	"sum": true, "avg": true, "min": true, "max": true, "count": true, "group": true, "stddev": true, "stdvar": true,
	"topk": true, "bottomk": true, "quantile": true, "count_values": true, "limitk": true, "limit_ratio": true,
}

// grouping keywords followed by a parenthesised label list.
var groupingKeywords = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
}

func isIdentStart(c byte) bool {
	return c == '_' || c == ':' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
}

func isIdent(c byte) bool { return isIdentStart(c) || (c >= '0' && c <= '9') }

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// scanString returns the end (exclusive) and the unquoted value of the string
// literal starting at s[i].
func scanString(s string, i int) (int, string, error) {
	q := s[i]
	var b strings.Builder
	for j := i + 1; j < len(s); j++ {
		c := s[j]
		if c == '\\' && q != '`' && j+1 < len(s) {
			j++
			b.WriteByte(s[j])
			continue
		}
		if c == q {
			return j + 1, b.String(), nil
		}
		b.WriteByte(c)
	}
	return 0, "", fmt.Errorf("unterminated string at offset %d", i)
}

func skipSpace(s string, i int) int {
	for i < len(s) && isSpace(s[i]) {
		i++
	}
	return i
}

// parseMatchers reads `{label op "value", ...}` starting at s[i] == '{'.
func parseMatchers(s string, i int) (int, []matcher, error) {
	var ms []matcher
	i++
	for {
		i = skipSpace(s, i)
		if i >= len(s) {
			return 0, nil, fmt.Errorf("unterminated {")
		}
		if s[i] == '}' {
			return i + 1, ms, nil
		}
		if s[i] == ',' {
			i++
			continue
		}
		start := i
		for i < len(s) && isIdent(s[i]) {
			i++
		}
		if start == i {
			return 0, nil, fmt.Errorf("want a label name at offset %d", i)
		}
		label := s[start:i]
		i = skipSpace(s, i)
		var op string
		for _, o := range []string{"=~", "!~", "!=", "="} {
			if strings.HasPrefix(s[i:], o) {
				op = o
				break
			}
		}
		if op == "" {
			return 0, nil, fmt.Errorf("want a matcher operator after %q", label)
		}
		i = skipSpace(s, i+len(op))
		if i >= len(s) || (s[i] != '"' && s[i] != '\'' && s[i] != '`') {
			return 0, nil, fmt.Errorf("want a string after %s%s", label, op)
		}
		end, val, err := scanString(s, i)
		if err != nil {
			return 0, nil, err
		}
		ms = append(ms, matcher{label: label, op: op, value: val})
		i = end
	}
}

// parseLabelList reads `(a, b)` starting at s[i] == '('.
func parseLabelList(s string, i int) (int, []string, error) {
	end := strings.IndexByte(s[i:], ')')
	if end < 0 {
		return 0, nil, fmt.Errorf("unterminated label list")
	}
	var out []string
	for _, l := range strings.Split(s[i+1:i+end], ",") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return i + end + 1, out, nil
}

// promqlRefs returns the metrics an expression selects (recording rule names
// included) and the labels it groups or matches on.
func promqlRefs(expr string) (refs []ref, grouping []string, err error) {
	s := expr
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case isSpace(c):
			i++
		case c == '"' || c == '\'' || c == '`':
			end, _, err := scanString(s, i)
			if err != nil {
				return nil, nil, err
			}
			i = end
		case c == '#': // comment to end of line
			for i < len(s) && s[i] != '\n' {
				i++
			}
		case c == '$': // Grafana variable: $x, ${x}, [[x]] is not used
			i++
			if i < len(s) && s[i] == '{' {
				end := strings.IndexByte(s[i:], '}')
				if end < 0 {
					return nil, nil, fmt.Errorf("unterminated ${")
				}
				i += end + 1
			}
			for i < len(s) && isIdent(s[i]) {
				i++
			}
		case c == '[': // range or subquery
			end := strings.IndexByte(s[i:], ']')
			if end < 0 {
				return nil, nil, fmt.Errorf("unterminated [")
			}
			i += end + 1
		case c == '{': // selector without a name
			end, ms, err := parseMatchers(s, i)
			if err != nil {
				return nil, nil, err
			}
			r := ref{matchers: ms}
			for _, m := range ms {
				if m.label == "__name__" && m.op == "=" {
					r.name = m.value
				}
			}
			if r.name == "" {
				return nil, nil, fmt.Errorf("a selector without a metric name: %q", s[i:end])
			}
			refs = append(refs, r)
			i = end
		case c >= '0' && c <= '9' || c == '.': // number or duration
			for i < len(s) && (isIdent(s[i]) || s[i] == '.') {
				if (s[i] == 'e' || s[i] == 'E') && i+1 < len(s) && (s[i+1] == '+' || s[i+1] == '-') {
					i++
				}
				i++
			}
		case isIdentStart(c):
			start := i
			for i < len(s) && isIdent(s[i]) {
				i++
			}
			word := s[start:i]
			next := skipSpace(s, i)
			switch {
			case groupingKeywords[word]:
				if next < len(s) && s[next] == '(' {
					end, ls, err := parseLabelList(s, next)
					if err != nil {
						return nil, nil, err
					}
					grouping = append(grouping, ls...)
					i = end
				}
			case promqlKeywords[word]:
			case next < len(s) && s[next] == '(':
				// a function or an aggregation
			default:
				r := ref{name: word}
				if next < len(s) && s[next] == '{' {
					end, ms, err := parseMatchers(s, next)
					if err != nil {
						return nil, nil, err
					}
					r.matchers = ms
					i = end
				}
				refs = append(refs, r)
			}
		default: // operators, parentheses, commas
			i++
		}
	}
	return refs, grouping, nil
}

func TestPromQLRefs(t *testing.T) {
	cases := []struct {
		expr     string
		refs     []ref
		grouping []string
	}{
		{expr: `sum by (le, instance) (rate(a_bucket{le="1", x=~"a|b"}[5m])) / on(instance) group_left(pod) b_total offset 5m > 1e-3`,
			refs: []ref{
				{name: "a_bucket", matchers: []matcher{{"le", "=", "1"}, {"x", "=~", "a|b"}}},
				{name: "b_total"},
			},
			grouping: []string{"le", "instance", "instance", "pod"}},
		{expr: `1 - agentrunner:x:ratio_rate5m and bool(up{job=~".*agentrunner.*"} == 0) or absent(c)`,
			refs: []ref{{name: "agentrunner:x:ratio_rate5m"}, {name: "up", matchers: []matcher{{"job", "=~", ".*agentrunner.*"}}}, {name: "c"}}},
		{expr: `histogram_quantile(0.99, sum(rate(d_bucket{a!="it's \"q\""}[$__rate_interval])) without (z)) * ${factor}`,
			refs:     []ref{{name: "d_bucket", matchers: []matcher{{"a", "!=", `it's "q"`}}}},
			grouping: []string{"z"}},
		{expr: `{__name__="e", f="g"} + 0x1F + 2.5e+3 + inf`,
			refs: []ref{{name: "e", matchers: []matcher{{"__name__", "=", "e"}, {"f", "=", "g"}}}}},
	}
	for _, c := range cases {
		refs, grouping, err := promqlRefs(c.expr)
		if err != nil {
			t.Errorf("%s: %v", c.expr, err)
			continue
		}
		if !reflect.DeepEqual(refs, c.refs) {
			t.Errorf("%s:\n got refs %+v\nwant %+v", c.expr, refs, c.refs)
		}
		if !reflect.DeepEqual(grouping, c.grouping) {
			t.Errorf("%s:\n got grouping %v\nwant %v", c.expr, grouping, c.grouping)
		}
	}
	for _, bad := range []string{`a{b="c"`, `a{b}`, `rate(a[5m`, `a{b="c}`, `{x="y"}`} {
		if _, _, err := promqlRefs(bad); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
}
