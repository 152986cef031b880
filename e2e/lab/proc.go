package lab

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// StopTimeout is how long Stop waits after SIGTERM before SIGKILL.
const StopTimeout = 5 * time.Second

// Proc is a long-lived process started in a namespace. Its stdout and stderr
// go to Log.
type Proc struct {
	// Name names the process in logs ("<ns short>-<name>.log").
	Name string
	// Log is the path of the file holding its output.
	Log string

	cmd  *exec.Cmd
	done chan struct{}
	err  error // set before done is closed

	stopOnce sync.Once
}

// Start starts argv in the namespace with its output in
// <lab dir>/<ns short>-<name>.log (-2, -3... for later ones of that name). env adds "K=V" variables. The process is
// stopped by the lab's cleanup if nobody stopped it before.
func (ns *NS) Start(name string, env []string, argv ...string) (*Proc, error) {
	l := ns.lab
	logPath := filepath.Join(l.Dir, ns.Short+"-"+name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o644)
	for i := 2; errors.Is(err, os.ErrExist); i++ { // a second process of that name
		logPath = filepath.Join(l.Dir, fmt.Sprintf("%s-%s-%d.log", ns.Short, name, i))
		f, err = os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o644)
	}
	if err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	defer f.Close() // the child has its own copy

	// Not CommandContext: the process outlives the call.
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.Name}, argv...)...)
	cmd.Env = append(l.env(), env...)
	cmd.Stdout = f
	cmd.Stderr = f
	// Setpgid: Stop signals the whole group. No Pdeathsig: it fires when
	// the forking OS thread exits, and NS.Do throws threads away.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p := &Proc{Name: name, Log: logPath, cmd: cmd, done: make(chan struct{})}

	l.mu.Lock()
	if l.cleaning {
		l.mu.Unlock()
		return nil, errors.New("lab: Start after cleanup")
	}
	err = cmd.Start()
	if err == nil {
		l.procs = append(l.procs, p)
	}
	l.mu.Unlock()
	line := strings.Join(argv, " ")
	if err != nil {
		l.record(ns.Name, "start "+line, 0, nil, err)
		return nil, fmt.Errorf("lab: [%s] start %s: %w", ns.Name, line, err)
	}
	l.record(ns.Name, fmt.Sprintf("start %s (pid %d, log %s)", line, cmd.Process.Pid, filepath.Base(logPath)), 0, nil, nil)
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Pid returns the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err returns how the process ended; only meaningful after Done is closed.
func (p *Proc) Err() error { return p.err }

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Output returns what the process has written so far.
func (p *Proc) Output() string {
	b, _ := os.ReadFile(p.Log)
	return string(b)
}

// Stop sends SIGTERM to the process group, then SIGKILL after StopTimeout,
// and waits for the process to exit. It is safe to call more than once.
func (p *Proc) Stop() {
	p.stopOnce.Do(func() {
		pgid := p.cmd.Process.Pid
		syscall.Kill(-pgid, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(StopTimeout):
			syscall.Kill(-pgid, syscall.SIGKILL)
			<-p.done
		}
		// Anything left in the group (children that ignored SIGTERM).
		syscall.Kill(-pgid, syscall.SIGKILL)
	})
	<-p.done
}

// Kill sends SIGKILL to the process group and waits for the process to
// exit, for tests of abrupt failures; a later Stop does nothing. It is
// safe to call more than once, and after Stop.
func (p *Proc) Kill() {
	p.stopOnce.Do(func() {
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	})
	<-p.done
}

// ErrExited is returned by waits that gave up because the process ended.
var ErrExited = errors.New("process exited")

// exitedError describes a process that ended early, with its log tail.
func (p *Proc) exitedError() error {
	return fmt.Errorf("lab: %s: %w (%v):\n%s", p.Name, ErrExited, p.err, tail([]byte(p.Output()), 30))
}
