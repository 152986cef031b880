// Package flagfile reads daemon configuration files that set the same keys
// as the command-line flags:
//
//	# comment
//	listen = 51820
//	endpoint = 192.0.2.1:51820
//	endpoint = [2001:db8::1]:51820   # repeatable flags repeat the key
//
// A key is a flag name without dashes. Flags given on the command line win
// over the file.
//
// It must not import any room of the tree (server/, client/, netstack/,
// egress/, lb/, e2e/).
package flagfile

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// Setting is one key = value line.
type Setting struct {
	Line       int
	Key, Value string
}

// MaxLine bounds one line of a config file.
const MaxLine = 4096

// Parse reads settings. Blank lines and lines starting with # are skipped;
// a # after whitespace starts a comment; values may be double-quoted.
func Parse(r io.Reader) ([]Setting, error) {
	var out []Setting
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 256), MaxLine)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("line %d: want key = value, got %q", n, line)
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		k = strings.TrimLeft(k, "-")
		if k == "" || strings.ContainsAny(k, " \t\"") {
			return nil, fmt.Errorf("line %d: bad key %q", n, k)
		}
		if strings.HasPrefix(v, `"`) {
			end := strings.IndexByte(v[1:], '"')
			if end < 0 {
				return nil, fmt.Errorf("line %d: unterminated quote", n)
			}
			rest := strings.TrimSpace(v[end+2:])
			if rest != "" && rest[0] != '#' {
				return nil, fmt.Errorf("line %d: text after closing quote", n)
			}
			v = v[1 : end+1]
		} else if i := strings.Index(v, " #"); i >= 0 {
			v = strings.TrimSpace(v[:i])
		} else if i := strings.Index(v, "\t#"); i >= 0 {
			v = strings.TrimSpace(v[:i])
		}
		out = append(out, Setting{Line: n, Key: k, Value: v})
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, fmt.Errorf("line %d: longer than %d bytes", n+1, MaxLine)
		}
		return nil, err
	}
	return out, nil
}

// Apply sets each setting on fs unless the flag was set on the command line
// (fs must already be parsed). Unknown keys are errors, named with their
// line, so a typo never silently changes nothing.
func Apply(fs *flag.FlagSet, settings []Setting, name string) error {
	onCLI := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { onCLI[f.Name] = true })
	for _, s := range settings {
		if s.Key == "config" {
			return fmt.Errorf("%s:%d: a config file cannot name another config file", name, s.Line)
		}
		if fs.Lookup(s.Key) == nil {
			return fmt.Errorf("%s:%d: unknown key %q", name, s.Line, s.Key)
		}
		if onCLI[s.Key] {
			continue
		}
		if err := fs.Set(s.Key, s.Value); err != nil {
			return fmt.Errorf("%s:%d: %s: %w", name, s.Line, s.Key, err)
		}
	}
	return nil
}
