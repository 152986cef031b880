package client

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wedge-edge/wedge/internal/api"
)

// Register posts pub, and the egress tags if set, to the registration API
// at apiURL (a base URL such as http://127.0.0.1:8080) and returns the
// registration. An error answer is returned with the server's message.
func Register(ctx context.Context, hc *http.Client, apiURL string, pub wgtypes.Key, tags api.Tags) (api.Registration, error) {
	body, _ := json.Marshal(api.RegRequest{PublicKey: pub.String(), Pool: tags.Pool, Country: tags.Country})
	url := strings.TrimSuffix(apiURL, "/") + "/v1/reg"
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return api.Registration{}, fmt.Errorf("register: %w", err)
	}
	hreq.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(hreq)
	if err != nil {
		return api.Registration{}, fmt.Errorf("register: %w", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return api.Registration{}, fmt.Errorf("register: read answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var e api.Error
		if json.Unmarshal(raw, &e) == nil && e.Error != "" {
			return api.Registration{}, fmt.Errorf("register: %s: %s", resp.Status, e.Error)
		}
		return api.Registration{}, fmt.Errorf("register: %s", resp.Status)
	}
	var r api.Registration
	if err := json.Unmarshal(raw, &r); err != nil {
		return api.Registration{}, fmt.Errorf("register: bad answer from %s: %w", url, err)
	}
	if err := CheckRegistration(r); err != nil {
		return api.Registration{}, fmt.Errorf("register: answer from %s: %w", url, err)
	}
	return r, nil
}

// Unregister removes registration id (used to undo a registration whose
// configuration could not be written, so no orphan is left behind).
func Unregister(ctx context.Context, hc *http.Client, apiURL, id string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, strings.TrimSuffix(apiURL, "/")+"/v1/reg/"+id, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent && resp.StatusCode != http.StatusNotFound {
		return fmt.Errorf("delete %s: %s", id, resp.Status)
	}
	return nil
}
