package lab

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
)

// Module is the module path Build looks for.
const Module = "github.com/wedge-edge/wedge"

// The main packages Build knows, relative to the module root.
const (
	PkgWedged    = "./cmd/wedged"
	PkgWedge     = "./cmd/wedge"
	PkgOriginsrv = "./e2e/lab/originsrv"
)

// Bins are the paths of built binaries.
type Bins struct {
	Wedged    string
	Wedge     string
	Originsrv string
}

// Build compiles wedged, wedge and originsrv into dir (once per process and
// directory; later calls return the same paths).
func Build(dir string) (Bins, error) {
	var b Bins
	var errs []error
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, t := range []struct {
		pkg string
		out *string
	}{{PkgWedged, &b.Wedged}, {PkgWedge, &b.Wedge}, {PkgOriginsrv, &b.Originsrv}} {
		wg.Go(func() {
			p, err := BuildPkg(dir, t.pkg)
			mu.Lock()
			defer mu.Unlock()
			*t.out = p
			errs = append(errs, err)
		})
	}
	wg.Wait()
	return b, errors.Join(errs...)
}

// BuildPlain is Build without WEDGE_LAB_BUILDFLAGS, into dir/plain: for
// tests that measure throughput, which a race-instrumented daemon (several
// times slower, and not in proportion) would make meaningless.
func BuildPlain(dir string) (Bins, error) {
	dir = filepath.Join(dir, "plain")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Bins{}, fmt.Errorf("lab: %w", err)
	}
	var b Bins
	var errs []error
	for _, t := range []struct {
		pkg string
		out *string
	}{{PkgWedged, &b.Wedged}, {PkgWedge, &b.Wedge}, {PkgOriginsrv, &b.Originsrv}} {
		p, err := buildPkg(dir, t.pkg, false)
		*t.out = p
		errs = append(errs, err)
	}
	return b, errors.Join(errs...)
}

type buildResult struct {
	once sync.Once
	path string
	err  error
}

var (
	buildMu    sync.Mutex
	buildCache = map[string]*buildResult{} // key: dir + "\x00" + pkg
)

// BuildPkg compiles one main package of the module (pkg relative to the
// module root, as "./cmd/wedged") into dir and returns the binary's path,
// once per process and directory. WEDGE_LAB_BUILDFLAGS (for example "-race",
// which .ci/run sets) adds flags to go build for every package but
// originsrv, the lab's own tool. A race report in any process log fails the
// test that owns the lab (see Lab cleanup).
func BuildPkg(dir, pkg string) (string, error) { return buildPkg(dir, pkg, true) }

func buildPkg(dir, pkg string, withFlags bool) (string, error) {
	buildMu.Lock()
	r, ok := buildCache[dir+"\x00"+pkg]
	if !ok {
		r = &buildResult{}
		buildCache[dir+"\x00"+pkg] = r
	}
	buildMu.Unlock()
	r.once.Do(func() {
		root, err := RepoRoot()
		if err != nil {
			r.err = err
			return
		}
		out := filepath.Join(dir, path.Base(pkg))
		args := []string{"build"}
		if withFlags && pkg != PkgOriginsrv {
			args = append(args, strings.Fields(os.Getenv("WEDGE_LAB_BUILDFLAGS"))...)
		}
		args = append(args, "-o", out, pkg)
		cmd := exec.Command("go", args...)
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			r.err = fmt.Errorf("lab: go build %s: %w\n%s", pkg, err, b)
			return
		}
		r.path = out
	})
	return r.path, r.err
}

// RepoRoot finds the root of the wedge module: $WEDGE_ROOT, else the first
// directory holding its go.mod above the working directory, else above this
// source file (a binary built from a checkout).
func RepoRoot() (string, error) {
	if d := os.Getenv("WEDGE_ROOT"); d != "" {
		return d, nil
	}
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		starts = append(starts, filepath.Dir(file))
	}
	for _, d := range starts {
		for {
			if isWedgeModule(filepath.Join(d, "go.mod")) {
				return d, nil
			}
			parent := filepath.Dir(d)
			if parent == d {
				break
			}
			d = parent
		}
	}
	return "", fmt.Errorf("lab: no go.mod of %s above %v (set WEDGE_ROOT)", Module, starts)
}

func isWedgeModule(gomod string) bool {
	f, err := os.Open(gomod)
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) == 2 && fields[0] == "module" {
			return fields[1] == Module
		}
	}
	return false
}
