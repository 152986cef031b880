package server

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wedge-edge/wedge/internal/atomicfile"
)

// LoadOrCreateKey reads the base64 WireGuard private key in path, creating
// it (mode 0600, written to a temporary file, fsynced and renamed, so a crash
// never leaves a half-written key) when the file does not exist. An
// existing key readable by group or others is refused, as LoadKey does.
func LoadOrCreateKey(path string) (wgtypes.Key, error) {
	st, err := os.Stat(path)
	switch {
	case err == nil:
		if err := checkKeyMode(path, st); err != nil {
			return wgtypes.Key{}, err
		}
		return readKey(path)
	case !errors.Is(err, fs.ErrNotExist):
		return wgtypes.Key{}, fmt.Errorf("server: key file: %w", err)
	}
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return wgtypes.Key{}, err
	}
	if err := atomicfile.WriteFile(path, []byte(k.String()+"\n"), 0o600); err != nil {
		return wgtypes.Key{}, fmt.Errorf("server: write key: %w", err)
	}
	return k, nil
}

func hexKey(k wgtypes.Key) string { return hex.EncodeToString(k[:]) }

// LoadKey reads an existing base64 WireGuard private key file, as `wg
// genkey` or `wedged genkey` writes it. A key readable by group or others
// is refused: it is the whole service's identity.
func LoadKey(path string) (wgtypes.Key, error) {
	st, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return wgtypes.Key{}, fmt.Errorf("server: key file %s does not exist (create one with: wedged genkey %s)", path, path)
	}
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("server: key file: %w", err)
	}
	if err := checkKeyMode(path, st); err != nil {
		return wgtypes.Key{}, err
	}
	return readKey(path)
}

// checkKeyMode refuses a key file that group or others may read or write:
// the key is the whole service's identity.
func checkKeyMode(path string, st fs.FileInfo) error {
	if st.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("server: key file %s is readable by others (mode %v): chmod 600 it", path, st.Mode().Perm())
	}
	return nil
}

// readKey parses the key file at path; a missing file's error wraps
// fs.ErrNotExist.
func readKey(path string) (wgtypes.Key, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("server: read key: %w", err)
	}
	k, err := wgtypes.ParseKey(strings.TrimSpace(string(raw)))
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("server: key file %s: %w", path, err)
	}
	return k, nil
}

// CreateKey writes a new private key to path (mode 0600, atomically); it
// refuses to overwrite an existing file.
func CreateKey(path string) (wgtypes.Key, error) {
	if _, err := os.Lstat(path); err == nil {
		return wgtypes.Key{}, fmt.Errorf("server: %s exists; not overwriting a key", path)
	}
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return wgtypes.Key{}, err
	}
	if err := atomicfile.WriteFile(path, []byte(k.String()+"\n"), 0o600); err != nil {
		return wgtypes.Key{}, fmt.Errorf("server: write key: %w", err)
	}
	return k, nil
}
