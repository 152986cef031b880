package socks5

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
)

// Wire constants of RFC 1928.
const (
	socksVersion = 0x05

	methodNoAuth       = 0x00
	methodNoAcceptable = 0xFF

	cmdConnect      = 0x01
	cmdBind         = 0x02
	cmdUDPAssociate = 0x03

	atypIPv4   = 0x01
	atypDomain = 0x03
	atypIPv6   = 0x04
)

// Reply codes (RFC 1928 §6).
const (
	repSucceeded           = 0x00
	repGeneralFailure      = 0x01
	repNotAllowed          = 0x02
	repNetworkUnreachable  = 0x03
	repHostUnreachable     = 0x04
	repConnectionRefused   = 0x05
	repCommandNotSupported = 0x07
	repAddrNotSupported    = 0x08
)

// Parse errors. errAddrType is answered with repAddrNotSupported; the
// others end the connection without a reply.
var (
	errVersion  = errors.New("socks5: not SOCKS version 5")
	errAddrType = errors.New("socks5: address type not supported")
	errDomain   = errors.New("socks5: empty domain name")
	errShort    = errors.New("socks5: short datagram")
)

// addr is a SOCKS address: an IP (ATYP 1 or 4) or a domain name (ATYP 3),
// and a port. An IPv4-mapped IPv6 address stays as sent (ATYP 4).
type addr struct {
	ip   netip.Addr // valid unless name is set
	name string
	port uint16
}

func addrFromAddrPort(ap netip.AddrPort) addr {
	return addr{ip: ap.Addr().Unmap().WithZone(""), port: ap.Port()}
}

// addrFromNet converts a net.Addr (a *net.TCPAddr or *net.UDPAddr) to an
// addr; the zero IPv4 address when it is neither.
func addrFromNet(a net.Addr) addr {
	switch a := a.(type) {
	case *net.TCPAddr:
		return addrFromAddrPort(a.AddrPort())
	case *net.UDPAddr:
		return addrFromAddrPort(a.AddrPort())
	}
	return addr{ip: netip.IPv4Unspecified()}
}

// hostPort returns the address as Dial takes it: "ip:port" (an IPv4-mapped
// address unmapped) or "name:port".
func (a addr) hostPort() string {
	if a.name != "" {
		return net.JoinHostPort(a.name, strconv.Itoa(int(a.port)))
	}
	return netip.AddrPortFrom(a.ip.Unmap(), a.port).String()
}

func (a addr) String() string { return a.hostPort() }

// appendTo appends ATYP, DST.ADDR and DST.PORT. A name longer than 255
// bytes cannot be encoded; callers only encode names they parsed.
func (a addr) appendTo(b []byte) []byte {
	switch {
	case a.name != "":
		b = append(b, atypDomain, byte(len(a.name)))
		b = append(b, a.name...)
	case a.ip.Is4():
		b = append(b, atypIPv4)
		b = append(b, a.ip.AsSlice()...)
	case a.ip.Is6():
		b = append(b, atypIPv6)
		b = append(b, a.ip.AsSlice()...)
	default:
		b = append(b, atypIPv4, 0, 0, 0, 0)
	}
	return binary.BigEndian.AppendUint16(b, a.port)
}

// readGreeting reads the method selection message (VER, NMETHODS,
// METHODS) and returns the methods offered.
func readGreeting(r io.Reader) ([]byte, error) {
	var h [2]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, err
	}
	if h[0] != socksVersion {
		return nil, fmt.Errorf("%w: greeting version %d", errVersion, h[0])
	}
	methods := make([]byte, h[1])
	if _, err := io.ReadFull(r, methods); err != nil {
		return nil, err
	}
	return methods, nil
}

// request is a SOCKS request (RFC 1928 §4).
type request struct {
	cmd byte
	dst addr
}

// readRequest reads a request (VER, CMD, RSV, ATYP, DST.ADDR, DST.PORT),
// reading no byte past it. An unknown ATYP returns the command read so
// far and errAddrType; the rest of the stream is then unparseable. RSV is
// ignored.
func readRequest(r io.Reader) (request, error) {
	var h [4]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return request{}, err
	}
	req := request{cmd: h[1]}
	if h[0] != socksVersion {
		return req, fmt.Errorf("%w: request version %d", errVersion, h[0])
	}
	var err error
	req.dst, err = readAddr(r, h[3])
	return req, err
}

func readAddr(r io.Reader, atyp byte) (addr, error) {
	var a addr
	var buf [256 + 2]byte
	switch atyp {
	case atypIPv4:
		if _, err := io.ReadFull(r, buf[:4+2]); err != nil {
			return a, err
		}
		a.ip = netip.AddrFrom4([4]byte(buf[:4]))
		a.port = binary.BigEndian.Uint16(buf[4:])
	case atypIPv6:
		if _, err := io.ReadFull(r, buf[:16+2]); err != nil {
			return a, err
		}
		a.ip = netip.AddrFrom16([16]byte(buf[:16]))
		a.port = binary.BigEndian.Uint16(buf[16:])
	case atypDomain:
		if _, err := io.ReadFull(r, buf[:1]); err != nil {
			return a, err
		}
		n := int(buf[0])
		if _, err := io.ReadFull(r, buf[:n+2]); err != nil {
			return a, err
		}
		if n == 0 {
			return a, errDomain
		}
		a.name = string(buf[:n])
		a.port = binary.BigEndian.Uint16(buf[n:])
	default:
		return a, fmt.Errorf("%w: %d", errAddrType, atyp)
	}
	return a, nil
}

// appendReply appends a reply (VER, REP, RSV, ATYP, BND.ADDR, BND.PORT).
func appendReply(b []byte, rep byte, bnd addr) []byte {
	return bnd.appendTo(append(b, socksVersion, rep, 0))
}

// parseUDPHeader parses the header of a datagram a client sent to the UDP
// relay (RSV(2), FRAG, ATYP, DST.ADDR, DST.PORT) and returns the fragment
// number, the destination and the payload, which aliases b. RSV is
// ignored.
func parseUDPHeader(b []byte) (frag byte, dst addr, payload []byte, err error) {
	if len(b) < 4 {
		return 0, dst, nil, errShort
	}
	frag = b[2]
	atyp := b[3]
	b = b[4:]
	switch atyp {
	case atypIPv4:
		if len(b) < 4+2 {
			return 0, dst, nil, errShort
		}
		dst.ip = netip.AddrFrom4([4]byte(b[:4]))
		b = b[4:]
	case atypIPv6:
		if len(b) < 16+2 {
			return 0, dst, nil, errShort
		}
		dst.ip = netip.AddrFrom16([16]byte(b[:16]))
		b = b[16:]
	case atypDomain:
		if len(b) < 1 {
			return 0, dst, nil, errShort
		}
		n := int(b[0])
		if n == 0 {
			return 0, dst, nil, errDomain
		}
		if len(b) < 1+n+2 {
			return 0, dst, nil, errShort
		}
		dst.name = string(b[1 : 1+n])
		b = b[1+n:]
	default:
		return 0, dst, nil, fmt.Errorf("%w: %d", errAddrType, atyp)
	}
	dst.port = binary.BigEndian.Uint16(b)
	return frag, dst, b[2:], nil
}

// appendUDPHeader appends the header of an unfragmented datagram from src.
func appendUDPHeader(b []byte, src addr) []byte {
	return src.appendTo(append(b, 0, 0, 0))
}
