// Package atomicfile writes files that a crash never leaves half written:
// keys, client configurations, generated feeds.
//
// It imports nothing of wedge's.
package atomicfile

import (
	"os"
	"path/filepath"
)

// WriteFile writes data to path with mode through a temporary file
// in the same directory, synced, and a rename, then syncs the directory:
// a reader never sees half a file, and a crash leaves the old file or the
// new one, never a mix, and never the new data with an older, looser mode.
func WriteFile(path string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
