package lab

// Packet capture for tests that check what goes over the wire: tcpdump -w
// inside a namespace, and a small reader for the classic pcap files it
// writes (no dependency beyond the standard library).

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Capture is a tcpdump writing a pcap file, started by NS.StartCapture.
type Capture struct {
	Proc *Proc
	// Path is the pcap file (in the lab directory, kept with the logs of
	// a failed test).
	Path string
}

// StartCapture runs tcpdump on dev inside the namespace, writing the
// packets that match filter (a pcap filter expression; "" for all) to a
// pcap file in the lab directory, and waits until it captures. Stop it
// with Capture.Stop; the lab's cleanup stops it otherwise.
func (ns *NS) StartCapture(dev, filter string) (*Capture, error) {
	f, err := os.CreateTemp(ns.lab.Dir, fmt.Sprintf("%s-%s-*.pcap", ns.Short, dev))
	if err != nil {
		return nil, fmt.Errorf("lab: capture: %w", err)
	}
	path := f.Name()
	f.Close()
	// -U: write each packet at once; --immediate-mode: no kernel-side
	// batching; -B: a large kernel buffer (KiB), so nothing is dropped;
	// -Z root: stay root, or Debian's tcpdump cannot write into the
	// lab's root-owned directory after dropping privileges.
	args := []string{"tcpdump", "-i", dev, "-n", "-U", "--immediate-mode", "-B", "16384", "-Z", "root", "-w", path}
	if filter != "" {
		args = append(args, filter)
	}
	p, err := ns.Start("tcpdump", nil, args...)
	if err != nil {
		return nil, err
	}
	// tcpdump reports on stderr once the capture is active.
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(p.Output(), "listening on") {
		if p.Exited() {
			return nil, p.exitedError()
		}
		if time.Now().After(deadline) {
			p.Stop()
			return nil, fmt.Errorf("lab: [%s] tcpdump on %s not listening after 10s:\n%s", ns.Name, dev, p.Output())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return &Capture{Proc: p, Path: path}, nil
}

// CaptureResult is what a stopped capture holds.
type CaptureResult struct {
	// UDP holds the UDP datagrams captured, in capture order.
	UDP []UDPDatagram
	// Packets counts every packet in the file; Skipped those ReadPcap
	// could not decode as UDP (other protocols, fragments).
	Packets, Skipped int
	// KernelDrops is tcpdump's "packets dropped by kernel" (-1 when it
	// did not say): packets the capture missed.
	KernelDrops int
}

var reKernelDrops = regexp.MustCompile(`(\d+) packets? dropped by kernel`)

// Stop stops tcpdump (SIGTERM: it writes out what it holds) and reads the
// pcap file.
func (c *Capture) Stop() (CaptureResult, error) {
	c.Proc.Stop()
	res := CaptureResult{KernelDrops: -1}
	if m := reKernelDrops.FindStringSubmatch(c.Proc.Output()); m != nil {
		res.KernelDrops, _ = strconv.Atoi(m[1])
	}
	f, err := os.Open(c.Path)
	if err != nil {
		return res, fmt.Errorf("lab: capture: %w", err)
	}
	defer f.Close()
	pr, err := ReadPcap(f)
	if err != nil {
		return res, fmt.Errorf("lab: capture %s: %w", filepath.Base(c.Path), err)
	}
	res.UDP, res.Packets, res.Skipped = pr.UDP, pr.Packets, pr.Skipped
	return res, nil
}

// UDPDatagram is one captured UDP datagram.
type UDPDatagram struct {
	Time     time.Time
	Src, Dst netip.AddrPort
	// Payload is the UDP payload as captured. When the capture truncated
	// the packet it is shorter than Len.
	Payload []byte
	// Len is the payload length the UDP header states.
	Len int
}

// Truncated reports whether the capture holds less of the payload than
// the datagram carried.
func (d UDPDatagram) Truncated() bool { return len(d.Payload) < d.Len }

// PcapResult is what ReadPcap found in a file.
type PcapResult struct {
	UDP              []UDPDatagram
	Packets, Skipped int
}

// pcap link-layer types ReadPcap understands.
const (
	linkEthernet  = 1
	linkRaw       = 101
	linkLinuxSLL  = 113
	linkLinuxSLL2 = 276
)

// ErrPcap is wrapped by every error ReadPcap returns.
var ErrPcap = errors.New("pcap")

// maxPcapRecord bounds one record: tcpdump's largest snapshot length.
const maxPcapRecord = 262144

// ReadPcap reads a classic pcap file (what tcpdump -w writes; not
// pcapng), in either byte order and with micro- or nanosecond
// timestamps, and returns its UDP datagrams over IPv4 and IPv6. Link
// types: Ethernet (with 802.1Q tags), raw IP, and Linux cooked capture v1
// and v2 (tcpdump -i any). Packets that are not UDP, IP fragments other
// than the first, and packets too short for their headers are counted in
// Skipped. A file cut off inside a record (a capture stopped hard) ends
// the reading without an error.
func ReadPcap(r io.Reader) (PcapResult, error) {
	var res PcapResult
	var hdr [24]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return res, fmt.Errorf("%w: file header: %w", ErrPcap, err)
	}
	var bo binary.ByteOrder
	nano := false
	switch m := binary.LittleEndian.Uint32(hdr[:4]); m {
	case 0xa1b2c3d4:
		bo = binary.LittleEndian
	case 0xa1b23c4d:
		bo, nano = binary.LittleEndian, true
	case 0xd4c3b2a1:
		bo = binary.BigEndian
	case 0x4d3cb2a1:
		bo, nano = binary.BigEndian, true
	default:
		return res, fmt.Errorf("%w: bad magic %#08x (pcapng is not supported)", ErrPcap, m)
	}
	link := bo.Uint32(hdr[20:24]) & 0x0fffffff // the top bits hold FCS flags
	switch link {
	case linkEthernet, linkRaw, linkLinuxSLL, linkLinuxSLL2:
	default:
		return res, fmt.Errorf("%w: link type %d not supported", ErrPcap, link)
	}
	var rec [16]byte
	buf := make([]byte, 0, 2048)
	for {
		if _, err := io.ReadFull(r, rec[:]); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return res, nil
			}
			return res, fmt.Errorf("%w: record header: %w", ErrPcap, err)
		}
		sec, frac := bo.Uint32(rec[0:4]), bo.Uint32(rec[4:8])
		incl := bo.Uint32(rec[8:12])
		if incl > maxPcapRecord {
			return res, fmt.Errorf("%w: record %d claims %d bytes", ErrPcap, res.Packets+1, incl)
		}
		if int(incl) > cap(buf) {
			buf = make([]byte, incl)
		}
		buf = buf[:incl]
		if _, err := io.ReadFull(r, buf); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return res, nil
			}
			return res, fmt.Errorf("%w: record %d: %w", ErrPcap, res.Packets+1, err)
		}
		res.Packets++
		ns := int64(frac) * 1000
		if nano {
			ns = int64(frac)
		}
		d, ok := decodeUDP(link, buf)
		if !ok {
			res.Skipped++
			continue
		}
		d.Time = time.Unix(int64(sec), ns)
		d.Payload = append([]byte(nil), d.Payload...) // buf is reused
		res.UDP = append(res.UDP, d)
	}
}

// EtherTypes.
const (
	etherIPv4  = 0x0800
	etherIPv6  = 0x86dd
	etherVLAN  = 0x8100
	etherQinQ  = 0x88a8
	protoUDP   = 17
	protoFrag6 = 44
)

// decodeUDP decodes one captured frame of the link type down to UDP.
func decodeUDP(link uint32, b []byte) (UDPDatagram, bool) {
	var etype uint16
	switch link {
	case linkEthernet:
		if len(b) < 14 {
			return UDPDatagram{}, false
		}
		etype, b = binary.BigEndian.Uint16(b[12:14]), b[14:]
		for etype == etherVLAN || etype == etherQinQ {
			if len(b) < 4 {
				return UDPDatagram{}, false
			}
			etype, b = binary.BigEndian.Uint16(b[2:4]), b[4:]
		}
	case linkLinuxSLL:
		if len(b) < 16 {
			return UDPDatagram{}, false
		}
		etype, b = binary.BigEndian.Uint16(b[14:16]), b[16:]
	case linkLinuxSLL2:
		if len(b) < 20 {
			return UDPDatagram{}, false
		}
		etype, b = binary.BigEndian.Uint16(b[0:2]), b[20:]
	case linkRaw:
		if len(b) < 1 {
			return UDPDatagram{}, false
		}
		switch b[0] >> 4 {
		case 4:
			etype = etherIPv4
		case 6:
			etype = etherIPv6
		}
	}
	var src, dst netip.Addr
	switch etype {
	case etherIPv4:
		if len(b) < 20 || b[0]>>4 != 4 {
			return UDPDatagram{}, false
		}
		ihl := int(b[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(b[2:4]))
		fragOff := binary.BigEndian.Uint16(b[6:8]) & 0x1fff
		if ihl < 20 || len(b) < ihl || b[9] != protoUDP || fragOff != 0 || total < ihl {
			return UDPDatagram{}, false
		}
		src, dst = netip.AddrFrom4([4]byte(b[12:16])), netip.AddrFrom4([4]byte(b[16:20]))
		if total < len(b) {
			b = b[:total] // Ethernet padding
		}
		b = b[ihl:]
	case etherIPv6:
		if len(b) < 40 || b[0]>>4 != 6 {
			return UDPDatagram{}, false
		}
		next := b[6]
		plen := int(binary.BigEndian.Uint16(b[4:6]))
		src, dst = netip.AddrFrom16([16]byte(b[8:24])), netip.AddrFrom16([16]byte(b[24:40]))
		b = b[40:]
		if plen < len(b) {
			b = b[:plen]
		}
		// Extension headers: hop-by-hop, routing, destination options,
		// and a fragment header of a first fragment.
		for next != protoUDP {
			switch next {
			case 0, 43, 60:
				if len(b) < 8 {
					return UDPDatagram{}, false
				}
				n := (int(b[1]) + 1) * 8
				if len(b) < n {
					return UDPDatagram{}, false
				}
				next, b = b[0], b[n:]
			case protoFrag6:
				if len(b) < 8 || binary.BigEndian.Uint16(b[2:4])&0xfff8 != 0 {
					return UDPDatagram{}, false
				}
				next, b = b[0], b[8:]
			default:
				return UDPDatagram{}, false
			}
		}
	default:
		return UDPDatagram{}, false
	}
	if len(b) < 8 {
		return UDPDatagram{}, false
	}
	ulen := int(binary.BigEndian.Uint16(b[4:6]))
	if ulen < 8 {
		return UDPDatagram{}, false
	}
	d := UDPDatagram{
		Src: netip.AddrPortFrom(src, binary.BigEndian.Uint16(b[0:2])),
		Dst: netip.AddrPortFrom(dst, binary.BigEndian.Uint16(b[2:4])),
		Len: ulen - 8,
	}
	d.Payload = b[8:min(len(b), ulen)]
	return d, true
}
