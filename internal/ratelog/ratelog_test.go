package ratelog

import (
	"testing"
	"time"
)

func TestLimiter(t *testing.T) {
	now := time.Unix(1000, 0)
	l := &Limiter{Every: time.Minute, Now: func() time.Time { return now }}
	if n, ok := l.Allow("a"); !ok || n != 1 {
		t.Fatalf("first a: %d, %v", n, ok)
	}
	if n, ok := l.Allow("b"); !ok || n != 1 {
		t.Fatalf("first b: %d, %v; kinds are apart", n, ok)
	}
	for range 4 {
		if _, ok := l.Allow("a"); ok {
			t.Fatal("a second line of a within the minute")
		}
	}
	now = now.Add(time.Minute)
	if n, ok := l.Allow("a"); !ok || n != 5 {
		t.Fatalf("a after a minute: %d, %v; want a line counting 5", n, ok)
	}
	if (&Limiter{}).Interval() != time.Minute {
		t.Error("the zero Limiter's interval is not a minute")
	}
}
