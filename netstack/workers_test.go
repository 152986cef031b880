package netstack

import (
	"sync"
	"testing"
	"time"
)

// TestWorkers: tasks that block run side by side; a worker idle when a task
// comes takes it (no new goroutine); every worker exits once done closes.
func TestWorkers(t *testing.T) {
	done := make(chan struct{})
	w := newWorkers(done)
	release := make(chan struct{})
	var started sync.WaitGroup
	started.Add(3)
	for range 3 {
		w.run(func() {
			started.Done()
			<-release
		})
	}
	ok := make(chan struct{})
	go func() { started.Wait(); close(ok) }()
	select {
	case <-ok:
	case <-time.After(5 * time.Second):
		t.Fatal("three blocking tasks did not all start")
	}
	close(release)

	// Once the three are idle, another task reuses one of them.
	deadline := time.Now().Add(5 * time.Second)
	for {
		select {
		case w.tasks <- func() {}:
		default:
			if time.Now().After(deadline) {
				t.Fatal("no idle worker took a task")
			}
			time.Sleep(time.Millisecond)
			continue
		}
		break
	}

	close(done)
	waited := make(chan struct{})
	go func() { w.wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(5 * time.Second):
		t.Fatal("workers did not exit after done")
	}
}
