package lab

import (
	"fmt"
	"net"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
)

// AttachXDPPass attaches a program that returns XDP_PASS to iface in ns.
// A frame another program sends back out with XDP_TX into a veth is
// dropped by the peer veth unless the peer has an XDP program (DESIGN.md,
// the lab): the router's node-facing interfaces need one. It stays until
// the lab's cleanup.
func (ns *NS) AttachXDPPass(iface string) error {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.XDP,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2 /* XDP_PASS */), asm.Return()},
	})
	if err != nil {
		return fmt.Errorf("lab: XDP_PASS program: %w", err)
	}
	var l link.Link
	err = ns.Do(func() error {
		ifi, err := net.InterfaceByName(iface)
		if err != nil {
			return err
		}
		l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifi.Index})
		return err
	})
	if err != nil {
		prog.Close()
		return fmt.Errorf("lab: [%s] attach XDP_PASS to %s: %w", ns.Name, iface, err)
	}
	ns.lab.onCleanup(func() error {
		l.Close()
		return prog.Close()
	})
	return nil
}
