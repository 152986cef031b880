package main

import (
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/wedge-edge/wedge/lb"
	"github.com/wedge-edge/wedge/server/cluster"
)

// defaultGUEPort is the UDP port nodes send each other GUE on. Any fixed
// port works; it must be the same on every node and open between them.
const defaultGUEPort = 6080

// xdpFront is the loaded XDP program and what feeds it.
type xdpFront struct {
	objs  *lb.Objects
	front *lb.Front
	unsub func()
}

func (x *xdpFront) close() {
	if x.unsub != nil {
		x.unsub()
	}
	x.front.Close()
	x.objs.Close()
}

// startFront loads the XDP program, attaches it to iface and, in a
// cluster, keeps its tables in step with the membership of this node's
// data center. Alone, the node owns every client and the program only
// passes packets (and would decapsulate nothing: no peers).
func startFront(c *config, id, dc string, underlay netip.Addr, vips []netip.Addr, member *cluster.Membership, log *slog.Logger) (*xdpFront, error) {
	fc := lb.FrontConfig{WGPort: uint16(c.listen), GUEPort: uint16(c.guePort), Self: id, SelfUnderlay: underlay, Log: log}
	for _, v := range vips {
		if v.Is4() {
			fc.VIP4 = v
		} else {
			fc.VIP6 = v
		}
	}
	objs, err := lb.Load()
	if err != nil {
		return nil, fmt.Errorf("--xdp: %w", err)
	}
	front, err := lb.NewFront(objs, fc)
	if err != nil {
		objs.Close()
		return nil, fmt.Errorf("--xdp: %w", err)
	}
	x := &xdpFront{objs: objs, front: front}
	if member != nil {
		x.unsub = member.Subscribe(func(ms []cluster.Member) {
			var lms []lb.Member
			for _, m := range ms {
				if m.DC != dc {
					continue
				}
				lm := lb.Member{ID: m.ID, Underlay: m.Underlay, Active: m.State == cluster.Active}
				// A draining node leaves the table only once its pins
				// are published: until then its clients would go
				// elsewhere and lose their sessions.
				if m.State == cluster.Draining {
					if m.Pinned {
						lm.Pins = m.PinnedClientIDs()
					} else {
						lm.Active = true
					}
				}
				lms = append(lms, lm)
			}
			if err := front.Update(lms); err != nil {
				log.Error("xdp: membership not applied", "err", err)
			}
		})
	}
	if err := front.Attach(c.xdp); err != nil {
		x.close()
		return nil, err
	}
	log.Info("xdp front attached", "iface", c.xdp, "vip", vips, "gue_port", c.guePort, "node", id)
	return x, nil
}
