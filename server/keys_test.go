package server

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestKeyFiles(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "service.key")
	if _, err := LoadKey(p); err == nil || !strings.Contains(err.Error(), "wedged genkey") {
		t.Fatalf("LoadKey of a missing file: %v, want a hint to run wedged genkey", err)
	}
	k, err := CreateKey(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := CreateKey(p); err == nil {
		t.Fatal("CreateKey overwrote an existing key")
	}
	got, err := LoadKey(p)
	if err != nil || got != k {
		t.Fatalf("LoadKey = %v, %v; want the created key", got, err)
	}
	if got, err := LoadOrCreateKey(p); err != nil || got != k {
		t.Fatalf("LoadOrCreateKey of an existing key = %v, %v", got, err)
	}
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o620} {
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadKey(p); err == nil || !strings.Contains(err.Error(), "chmod 600") {
			t.Errorf("LoadKey of a mode %v key: %v, want a refusal", mode, err)
		}
		if _, err := LoadOrCreateKey(p); err == nil || !strings.Contains(err.Error(), "chmod 600") {
			t.Errorf("LoadOrCreateKey of a mode %v key: %v, want a refusal", mode, err)
		}
	}
	if err := os.Chmod(p, 0o400); err != nil {
		t.Fatal(err)
	}
	if got, err := LoadOrCreateKey(p); err != nil || got != k {
		t.Fatalf("LoadOrCreateKey of a mode 0400 key = %v, %v; want the key", got, err)
	}
	bad := filepath.Join(dir, "bad.key")
	os.WriteFile(bad, []byte("not a key\n"), 0o600)
	if _, err := LoadKey(bad); err == nil {
		t.Fatal("LoadKey accepted garbage")
	}
	fresh := filepath.Join(dir, "fresh.key")
	k2, err := LoadOrCreateKey(fresh)
	if err != nil || k2 == k {
		t.Fatalf("LoadOrCreateKey of a new file = %v, %v", k2, err)
	}
	if st, _ := os.Stat(fresh); st.Mode().Perm() != 0o600 {
		t.Fatalf("new key mode %v", st.Mode().Perm())
	}
}
