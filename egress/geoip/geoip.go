// Package geoip maps a client's outer (WAN) address to an ISO 3166-1
// alpha-2 country code from a MaxMind-format (.mmdb) database, so the node
// can pick the client's egress country at handshake time.
//
// Supported database shapes (the first valid code wins, per record):
//
//   - MaxMind GeoLite2/GeoIP2 Country and City, and DB-IP's
//     GeoLite2-compatible "lite" databases: country.iso_code, falling back
//     to registered_country.iso_code (set for anycast and satellite ranges
//     whose country is unknown).
//   - ip-location-db style country databases: a top-level country_code.
//
// Only those three fields are decoded; all other data is skipped. A code
// counts only if it is two ASCII letters; it is returned upper case.
//
// The database is read into memory rather than memory-mapped: replacing a
// mapped file in place (cp over it, or a truncate) raises SIGBUS in the
// reading process, which would take the whole node down. The cost is the
// file size in heap (about 9 MB for GeoLite2-Country, 60 MB for City;
// prefer a Country database).
//
// Like egress, it must not import gVisor, wireguard-go, server/, client/,
// lb/ or netstack/.
package geoip

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"sync/atomic"
	"time"

	"github.com/oschwald/maxminddb-golang/v2"
)

// ErrNoCountryData is wrapped by Open's error when the file is a valid
// MaxMind DB but carries none of the supported country fields (an ASN or
// ISP database, say).
var ErrNoCountryData = errors.New("geoip: database has no country data")

// probeNetworks and probeRecords bound what openBytes inspects to decide
// whether a database has country data: enough to get past the empty
// reserved ranges at the start of a real database, few enough that a
// corrupt tree cannot make opening slow.
const (
	probeNetworks = 4096
	probeRecords  = 64
)

// DB is an open country database. Country is safe for concurrent use, also
// concurrently with Close.
type DB struct {
	// r is nil after Close. The reader's bytes are ordinary heap memory, so a
	// lookup that loaded r before Close completes safely and the memory is
	// freed by the garbage collector when the last lookup drops it.
	r    atomic.Pointer[maxminddb.Reader]
	info string
}

// record holds the only fields Country decodes; the decoder skips the rest
// of the (for City databases, large) record without materialising it.
type record struct {
	Country struct {
		ISOCode string `maxminddb:"iso_code"`
	} `maxminddb:"country"`
	RegisteredCountry struct {
		ISOCode string `maxminddb:"iso_code"`
	} `maxminddb:"registered_country"`
	CountryCode string `maxminddb:"country_code"`
}

// Open reads the database at path. Every error names path: a missing or
// unreadable file (errors.Is with fs.ErrNotExist etc. works), an empty
// file, a file that is not a MaxMind DB, and a database without country
// data (ErrNoCountryData).
//
// To reload, the caller opens the new file (OpenIfChanged helps), swaps it
// into an atomic.Pointer[DB] and closes the old one; no grace period is
// needed, see Close.
func Open(path string) (*DB, error) {
	db, _, err := OpenIfChanged(path, nil)
	return db, err
}

// OpenIfChanged opens the database at path unless the file is the one prev
// describes: the same file (device and inode), size and modification time.
// It then returns nil, prev, nil. Otherwise it returns the new database and
// the FileInfo to pass as prev next time; prev may be nil to always open.
//
// Replacing the file by renaming a new one over it (what geoipupdate does)
// is always noticed. The FileInfo is taken from the opened file, so it
// describes exactly the bytes that were read.
func OpenIfChanged(path string, prev os.FileInfo) (*DB, os.FileInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("geoip: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, fmt.Errorf("geoip: %w", err)
	}
	if prev != nil && os.SameFile(prev, fi) && prev.Size() == fi.Size() && prev.ModTime().Equal(fi.ModTime()) {
		return nil, prev, nil
	}
	if !fi.Mode().IsRegular() {
		return nil, nil, fmt.Errorf("geoip: open %s: not a regular file", path)
	}
	if fi.Size() == 0 {
		return nil, nil, fmt.Errorf("geoip: open %s: file is empty, not a MaxMind DB", path)
	}
	// Read what Stat promised and nothing more: a file growing under us is
	// being rewritten in place, and the next poll will see a new FileInfo.
	data := make([]byte, fi.Size())
	if _, err := io.ReadFull(f, data); err != nil {
		return nil, nil, fmt.Errorf("geoip: read %s: %w", path, err)
	}
	db, err := openBytes(data)
	if err != nil {
		return nil, nil, fmt.Errorf("geoip: open %s: %w", path, err)
	}
	return db, fi, nil
}

// openBytes opens a database held in data, which it retains: the caller
// must not modify data afterwards. Errors do not name a file; Open adds it.
func openBytes(data []byte) (*DB, error) {
	r, err := maxminddb.OpenBytes(data)
	if err != nil {
		return nil, fmt.Errorf("not a MaxMind DB file: %w", err)
	}
	m := r.Metadata
	if m.IPVersion != 4 && m.IPVersion != 6 {
		return nil, fmt.Errorf("not a MaxMind DB file: ip_version %d, want 4 or 6", m.IPVersion)
	}
	if err := probe(r); err != nil {
		return nil, err
	}
	db := &DB{
		info: fmt.Sprintf("%s built %s, IPv%d tree, %d nodes",
			m.DatabaseType, m.BuildTime().UTC().Format(time.RFC3339), m.IPVersion, m.NodeCount),
	}
	db.r.Store(r)
	return db, nil
}

// probe decides at open time whether r has country data in a supported
// shape, so that a wrong --geoip file (an ASN database, say) fails at
// startup instead of silently giving every client the default country.
// Checking metadata.database_type would reject third-party databases of the
// right shape, so it decodes the first records in tree order instead and
// accepts the database if any of them yields a code.
func probe(r *maxminddb.Reader) error {
	networks, records := 0, 0
	var lastErr error
	for res := range r.Networks(maxminddb.IncludeNetworksWithoutData()) {
		if err := res.Err(); err != nil {
			return fmt.Errorf("corrupt MaxMind DB: %w", err)
		}
		if networks++; networks > probeNetworks {
			break
		}
		if !res.Found() {
			continue
		}
		if _, ok, err := decodeCountry(res); ok {
			return nil
		} else if err != nil {
			lastErr = err
		}
		if records++; records >= probeRecords {
			break
		}
	}
	if records == 0 {
		return fmt.Errorf("%w: no networks with data", ErrNoCountryData)
	}
	if lastErr != nil {
		return fmt.Errorf("%w: in the first %d records, none has country.iso_code, registered_country.iso_code or country_code (last decode error: %v)", ErrNoCountryData, records, lastErr)
	}
	return fmt.Errorf("%w: in the first %d records, none has country.iso_code, registered_country.iso_code or country_code", ErrNoCountryData, records)
}

// Country returns the upper-case ISO 3166-1 alpha-2 code for a. It reports
// false when a is not in the database, its record has no usable code, or
// the database is closed. An IPv4-mapped IPv6 address is looked up as IPv4,
// since that is how a dual-stack socket reports an IPv4 client.
func (db *DB) Country(a netip.Addr) (string, bool) {
	r := db.r.Load()
	if r == nil {
		return "", false
	}
	code, ok, _ := decodeCountry(r.Lookup(a.Unmap()))
	return code, ok
}

func decodeCountry(res maxminddb.Result) (string, bool, error) {
	if !res.Found() {
		return "", false, res.Err()
	}
	var rec record
	if err := res.Decode(&rec); err != nil {
		return "", false, err
	}
	for _, c := range [...]string{rec.Country.ISOCode, rec.RegisteredCountry.ISOCode, rec.CountryCode} {
		if code, ok := normalize(c); ok {
			return code, true, nil
		}
	}
	return "", false, nil
}

// normalize returns c upper-cased if it is two ASCII letters.
func normalize(c string) (string, bool) {
	if len(c) != 2 {
		return "", false
	}
	b0, b1 := c[0], c[1]
	if 'A' <= b0 && b0 <= 'Z' && 'A' <= b1 && b1 <= 'Z' {
		return c, true
	}
	b0, b1 = b0&^0x20, b1&^0x20 // ASCII upper-case; non-letters stay out of A-Z
	if 'A' <= b0 && b0 <= 'Z' && 'A' <= b1 && b1 <= 'Z' {
		return string([]byte{b0, b1}), true
	}
	return "", false
}

// Info describes the database for the node's startup log: type, build time
// and tree size.
func (db *DB) Info() string { return db.info }

// Close releases the database. Country returns false afterwards. Close may
// be called concurrently with Country: lookups already running finish
// normally, because the data is heap memory the garbage collector frees
// once they are done, so a reloading caller needs no grace period. Close
// is idempotent and always returns nil.
func (db *DB) Close() error {
	db.r.Store(nil)
	return nil
}
