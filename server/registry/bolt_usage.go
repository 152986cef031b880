package registry

import (
	"bytes"
	"context"
	"time"

	"go.etcd.io/bbolt"
)

var _ UsageStore = (*Bolt)(nil)

// AddUsage adds deltas to node's entries in one transaction
// (UsageStore.AddUsage).
func (b *Bolt) AddUsage(ctx context.Context, node string, batch uint64, deltas []Delta) (map[string]Usage, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	out := make(map[string]Usage, len(deltas))
	err := b.db.Update(func(tx *bbolt.Tx) error {
		clients, usage := tx.Bucket(bucketClients), tx.Bucket(bucketUsage)
		for _, d := range deltas {
			if clients.Get([]byte(d.ID)) == nil {
				continue
			}
			u, err := boltUsage(usage, d.ID)
			if err != nil {
				continue // unreadable: left alone, as Etcd does
			}
			u, done := u.add(node, batch, d)
			if !done {
				rec, err := encodeUsage(u)
				if err != nil {
					return err
				}
				if err := usage.Put([]byte(d.ID), rec); err != nil {
					return err
				}
			}
			out[d.ID] = u
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func boltUsage(usage *bbolt.Bucket, id string) (Usage, error) {
	raw := usage.Get([]byte(id))
	if raw == nil {
		return Usage{}, nil
	}
	return decodeUsage(raw)
}

// Usage returns the usage of registration id.
func (b *Bolt) Usage(ctx context.Context, id string) (Usage, error) {
	var u Usage
	err := b.db.View(func(tx *bbolt.Tx) error {
		if tx.Bucket(bucketClients).Get([]byte(id)) == nil {
			return ErrNotFound
		}
		var err error
		u, err = boltUsage(tx.Bucket(bucketUsage), id)
		return err
	})
	return u, err
}

// ResetUsage starts a new period of registration id.
func (b *Bolt) ResetUsage(ctx context.Context, id string) (Usage, error) {
	u := Usage{Since: time.Now().UTC().Truncate(time.Second)}
	rec, err := encodeUsage(u)
	if err != nil {
		return Usage{}, err
	}
	err = b.db.Update(func(tx *bbolt.Tx) error {
		if tx.Bucket(bucketClients).Get([]byte(id)) == nil {
			return ErrNotFound
		}
		return tx.Bucket(bucketUsage).Put([]byte(id), rec)
	})
	if err != nil {
		return Usage{}, err
	}
	return u, nil
}

// ListUsage returns a page of registrations with their usage
// (UsageStore.ListUsage).
func (b *Bolt) ListUsage(ctx context.Context, after string, limit int) ([]ClientUsage, error) {
	limit = pageLimit(limit)
	var out []ClientUsage
	err := b.db.View(func(tx *bbolt.Tx) error {
		cur := tx.Bucket(bucketClients).Cursor()
		usage := tx.Bucket(bucketUsage)
		k, raw := cur.Seek([]byte(after))
		if k != nil && bytes.Equal(k, []byte(after)) {
			k, raw = cur.Next()
		}
		for ; k != nil && len(out) < limit; k, raw = cur.Next() {
			c, err := decode(raw)
			if err != nil {
				return err
			}
			u, err := boltUsage(usage, c.ID)
			if err != nil {
				return err
			}
			out = append(out, ClientUsage{Client: c, Usage: u})
		}
		return nil
	})
	return out, err
}
