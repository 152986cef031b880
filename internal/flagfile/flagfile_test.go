package flagfile

import (
	"flag"
	"strings"
	"testing"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(s string) error { *l = append(*l, s); return nil }

func TestParseApply(t *testing.T) {
	in := `# a node
listen = 51821
endpoint = 192.0.2.1:51820   # v4
endpoint = "[2001:db8::1]:51820"
--api=127.0.0.1:9000

state = /tmp/x # overridden on the command line
`
	ss, err := Parse(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	listen := fs.Int("listen", 51820, "")
	api := fs.String("api", "", "")
	state := fs.String("state", "", "")
	var eps list
	fs.Var(&eps, "endpoint", "")
	if err := fs.Parse([]string{"--state", "/var/lib/cli"}); err != nil {
		t.Fatal(err)
	}
	if err := Apply(fs, ss, "node.conf"); err != nil {
		t.Fatal(err)
	}
	if *listen != 51821 || *api != "127.0.0.1:9000" || *state != "/var/lib/cli" {
		t.Errorf("got listen=%d api=%q state=%q", *listen, *api, *state)
	}
	if got := eps.String(); got != "192.0.2.1:51820,[2001:db8::1]:51820" {
		t.Errorf("endpoints = %q", got)
	}
}

func TestErrors(t *testing.T) {
	for _, in := range []string{"novalue", `k = "open`, `k = "a" b`, "= v", "a b = c", strings.Repeat("x", MaxLine+1)} {
		if _, err := Parse(strings.NewReader(in)); err == nil {
			t.Errorf("Parse(%.20q) succeeded, want error", in)
		}
	}
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.Int("listen", 0, "")
	fs.Parse(nil)
	if err := Apply(fs, []Setting{{Line: 3, Key: "lisen", Value: "1"}}, "f"); err == nil || !strings.Contains(err.Error(), "f:3") {
		t.Errorf("unknown key: got %v", err)
	}
	if err := Apply(fs, []Setting{{Line: 4, Key: "listen", Value: "x"}}, "f"); err == nil || !strings.Contains(err.Error(), "f:4") {
		t.Errorf("bad value: got %v", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add("listen = 1\n# c\nendpoint = \"a b\" # c\n")
	f.Add("k=v\r\nk2 = v2\t# x")
	f.Fuzz(func(t *testing.T, in string) {
		ss, err := Parse(strings.NewReader(in))
		if err != nil {
			return
		}
		for _, s := range ss {
			if s.Key == "" || strings.ContainsAny(s.Key, " \t\"\n") || strings.Contains(s.Value, "\n") {
				t.Fatalf("bad setting %+v from %q", s, in)
			}
		}
	})
}
