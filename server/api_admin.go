package server

// The admin API's door: everything (status, nodes, drain, any
// registration, its tags, plus tier and quota) behind the admin token,
// answered only for the Host names the operator expects.

import (
	"net"
	"net/http"
	"strings"
)

// AdminConfig is what AdminHandler checks before a request reaches the
// admin API.
type AdminConfig struct {
	// Token is the admin credential, sent as "Authorization: Bearer
	// TOKEN". The zero AdminToken refuses every request.
	Token AdminToken
	// Addr is the address the API listens on (host:port). Requests are
	// answered when their Host is Addr, or localhost, 127.0.0.1 or [::1]
	// with Addr's port, or one of Hosts.
	Addr string
	// Hosts are more names the API answers to (--api-host): "NAME" is
	// accepted alone and with Addr's port, "NAME:PORT" as it is.
	Hosts []string
}

// AdminHandler serves the admin API (see routes): a request with an
// Origin header is refused (403), one whose Host is not an expected
// name is refused with 421 Misdirected Request before anything else is
// looked at (a DNS-rebinding page reaches the API under its own name),
// and one without the admin token gets 401.
func (n *Node) AdminHandler(cfg AdminConfig) http.Handler {
	hosts := allowedHosts(cfg.Addr, cfg.Hosts)
	routes := n.routes()
	return noBrowsers(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !hosts[strings.ToLower(r.Host)] {
			writeError(w, http.StatusMisdirectedRequest, "this API does not answer to Host "+quoteHost(r.Host)+
				" (the node's operator can add the name with --api-host)")
			return
		}
		tok, err := ParseBearer(r.Header.Get("Authorization"))
		if err == nil && !cfg.Token.Matches(tok) {
			err = errWrongAdminToken
			if _, rerr := ParseRegToken(tok); rerr == nil {
				err = errRegTokenOnAdmin
			}
		}
		if err != nil {
			unauthorized(w, "wedge-admin", err.Error())
			return
		}
		routes.ServeHTTP(w, r)
	}))
}

type authError string

func (e authError) Error() string { return string(e) }

const (
	errWrongAdminToken = authError("wrong admin token")
	errRegTokenOnAdmin = authError("that is a registration's token; the admin API takes the admin token (--admin-token-file)")
)

// unauthorized answers 401 with the challenge RFC 6750 asks for.
func unauthorized(w http.ResponseWriter, realm, msg string) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="`+realm+`"`)
	writeError(w, http.StatusUnauthorized, msg)
}

// allowedHosts is the set of Host values (lower case) the admin API
// answers to.
func allowedHosts(addr string, extra []string) map[string]bool {
	out := map[string]bool{}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return out
	}
	out[strings.ToLower(net.JoinHostPort(host, port))] = true
	for _, h := range []string{"localhost", "127.0.0.1", "::1"} {
		out[net.JoinHostPort(h, port)] = true
		if port == "80" {
			out[strings.Trim(net.JoinHostPort(h, ""), ":")] = true
		}
	}
	for _, h := range extra {
		h = strings.ToLower(strings.TrimSpace(h))
		if h == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(h); err == nil {
			out[h] = true
			continue
		}
		out[h] = true
		out[net.JoinHostPort(strings.Trim(h, "[]"), port)] = true
	}
	return out
}

// quoteHost shows a Host header in an error message, shortened.
func quoteHost(h string) string {
	if len(h) > 64 {
		h = h[:64] + "…"
	}
	return `"` + strings.ToValidUTF8(h, "?") + `"`
}
