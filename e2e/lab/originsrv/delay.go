package main

import (
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.zx2c4.com/wireguard/tun"
)

// delayHop is `originsrv delay -tun NAME -ms N`: a TUN device that holds
// every packet routed into it for N milliseconds and then hands it back
// to the kernel, as if it had arrived on NAME. This kernel has no netem
// (nor fq or tbf), so the lab adds latency with it: policy routing sends
// the traffic to delay into NAME (for example `ip rule add iif IN to DST
// lookup T` and `ip route add default dev NAME table T`), and the packets
// coming back out of NAME take the main table on. It runs until SIGTERM.
func delayHop(args []string) error {
	fs := flag.NewFlagSet("delay", flag.ExitOnError)
	name := fs.String("tun", "dly0", "TUN device `NAME` to create")
	ms := fs.Int("ms", 20, "delay of every packet, in milliseconds")
	mtu := fs.Int("mtu", 1600, "the device's MTU")
	fs.Parse(args)
	if *ms < 0 || *ms > 10000 {
		return errors.New("delay: -ms wants 0..10000")
	}
	dev, err := tun.CreateTUN(*name, *mtu)
	if err != nil {
		return fmt.Errorf("delay: %w", err)
	}
	defer dev.Close()
	d := newDelayer(dev, time.Duration(*ms)*time.Millisecond)
	go d.read()
	go d.write()
	log.Printf("delay: %s holds every packet %d ms", *name, *ms)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
	select {
	case <-sig:
		return nil
	case err := <-d.failed:
		return err
	}
}

// delayOffset is the headroom every buffer keeps before the packet: the
// TUN device's virtio header goes there (wireguard-go uses 16 too).
const delayOffset = 16

// held is one packet and when it leaves.
type held struct {
	at  time.Time
	buf []byte // delayOffset of headroom, then the packet
}

// delayer moves packets from the device's reads to its writes, each
// after delay, in order (the delay is the same for all).
type delayer struct {
	dev    tun.Device
	delay  time.Duration
	queue  chan held
	failed chan error
}

func newDelayer(dev tun.Device, delay time.Duration) *delayer {
	return &delayer{dev: dev, delay: delay, queue: make(chan held, 65536), failed: make(chan error, 2)}
}

func (d *delayer) read() {
	n := d.dev.BatchSize()
	bufs := make([][]byte, n)
	sizes := make([]int, n)
	for {
		for i := range bufs {
			if bufs[i] == nil {
				bufs[i] = make([]byte, delayOffset+65535)
			}
		}
		got, err := d.dev.Read(bufs, sizes, delayOffset)
		if err != nil && !errors.Is(err, tun.ErrTooManySegments) {
			d.failed <- fmt.Errorf("delay: read: %w", err)
			return
		}
		at := time.Now().Add(d.delay)
		for i := range got {
			select {
			case d.queue <- held{at: at, buf: bufs[i][:delayOffset+sizes[i]]}:
				bufs[i] = nil // the writer owns it now
			default: // a full queue drops, as a full link would
			}
		}
	}
}

func (d *delayer) write() {
	batch := make([][]byte, 0, d.dev.BatchSize())
	for p := range d.queue {
		if w := time.Until(p.at); w > 0 {
			time.Sleep(w)
		}
		batch = append(batch[:0], p.buf)
		// Whatever else is due goes in the same write.
	more:
		for len(batch) < cap(batch) {
			select {
			case q := <-d.queue:
				if time.Until(q.at) > 0 {
					d.flush(batch)
					batch = batch[:0]
					time.Sleep(time.Until(q.at))
				}
				batch = append(batch, q.buf)
			default:
				break more
			}
		}
		d.flush(batch)
	}
}

func (d *delayer) flush(batch [][]byte) {
	if len(batch) == 0 {
		return
	}
	if _, err := d.dev.Write(batch, delayOffset); err != nil {
		log.Printf("delay: write: %v", err)
	}
}
