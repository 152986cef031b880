package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"time"

	"github.com/wedge-edge/wedge/client"
	"github.com/wedge-edge/wedge/internal/api"
	"github.com/wedge-edge/wedge/internal/atomicfile"
)

// ensureRegistered asks the public API whether the config's registration
// still exists (GET with its token). When the node answers that it is
// gone (removed by its operator, or expired because the client never
// handshook), it registers the same key again and rewrites the file at
// path, returning the new config. Configs without a public API and a
// token are returned as they are, and so is cfg when the API cannot be
// asked (the tunnel may work without it).
func ensureRegistered(ctx context.Context, path string, cfg *client.Config, enroll string, log *slog.Logger) (*client.Config, error) {
	if cfg.Token == "" || cfg.Registration == "" || !strings.HasPrefix(cfg.API, "https://") {
		return cfg, nil
	}
	hc := client.HTTPClient(cfg.Fingerprint)
	hc.Timeout = 10 * time.Second
	a := &client.API{URL: cfg.API, HTTP: hc, Token: cfg.Token}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, err := a.Get(ctx, cfg.Registration)
	switch {
	case err == nil:
		return cfg, nil
	case !errors.Is(err, client.ErrGone):
		log.Warn("could not check the registration with the node; connecting with the config as it is", "api", cfg.API, "err", err)
		return cfg, nil
	}
	log.Warn("the node says the registration is gone; registering the same key again", "id", cfg.Registration, "api", cfg.API)
	reg, err := (&client.API{URL: cfg.API, HTTP: hc}).Register(ctx,
		api.RegRequest{PublicKey: cfg.PrivateKey.PublicKey().String(), EnrollToken: enroll})
	if err != nil {
		return nil, fmt.Errorf("connect: the registration is gone and registering again failed: %w", err)
	}
	var b bytes.Buffer
	err = client.WriteConfig(&b, cfg.PrivateKey, reg, client.WriteOptions{
		Family: endpointFamily(cfg.Peer.Endpoint), API: cfg.API, Keepalive: cfg.Peer.PersistentKeepalive, Fingerprint: cfg.Fingerprint})
	if err == nil {
		err = atomicfile.WriteFile(path, b.Bytes(), 0o600)
	}
	if err != nil {
		// Without the file the new registration's token is lost: undo it.
		if derr := (&client.API{URL: cfg.API, HTTP: hc, Token: reg.Token}).Delete(ctx, reg.ID); derr != nil {
			log.Error("could not undo the new registration", "id", reg.ID, "err", derr)
		}
		return nil, fmt.Errorf("connect: registered again but could not rewrite %s: %w", path, err)
	}
	ncfg, err := client.Parse(bytes.NewReader(b.Bytes()))
	if err != nil {
		return nil, fmt.Errorf("connect: %s: %w", path, err)
	}
	log.Info("registered again; config rewritten", "id", reg.ID, "client_id", reg.ClientID, "config", path)
	return ncfg, nil
}

// endpointFamily is 4 or 6 for a literal [Peer] Endpoint, else 0.
func endpointFamily(ep string) int {
	ap, err := netip.ParseAddrPort(ep)
	switch {
	case err != nil:
		return 0
	case ap.Addr().Unmap().Is4():
		return 4
	default:
		return 6
	}
}
