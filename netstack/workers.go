package netstack

import (
	"sync"
	"time"
)

// workerIdle is how long a worker waits for its next task before it exits.
const workerIdle = 10 * time.Second

// workers runs tasks on goroutines that outlive them. Each TCP flow runs
// three tasks (the handler that dials, and the two copy loops), and each
// grows its goroutine's stack past the first 8 KiB in gVisor's and the
// net package's deep call paths: in a connection-rate run, growing fresh
// stacks (runtime.newstack, copystack) was ~9% of the node's CPU. A worker
// that finished a task takes the next with its stack already grown; it
// exits after workerIdle without one, or once done is closed.
type workers struct {
	tasks chan func()
	done  <-chan struct{}
	wg    sync.WaitGroup
}

func newWorkers(done <-chan struct{}) *workers {
	return &workers{tasks: make(chan func()), done: done}
}

// run runs f on an idle worker, or on a new one when none is idle.
func (w *workers) run(f func()) {
	select {
	case w.tasks <- f:
		return
	default:
	}
	w.wg.Add(1)
	go w.loop(f)
}

func (w *workers) loop(f func()) {
	defer w.wg.Done()
	idle := time.NewTimer(workerIdle)
	defer idle.Stop()
	for {
		f()
		f = nil
		idle.Reset(workerIdle)
		select {
		case f = <-w.tasks:
		case <-idle.C:
			return
		case <-w.done:
			return
		}
	}
}

// wait waits for every worker to exit: call it after done is closed and
// every task has returned.
func (w *workers) wait() { w.wg.Wait() }
