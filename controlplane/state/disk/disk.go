// Package disk keeps the control plane's state (package state) in an
// embedded bbolt database on local disk, for control planes that run
// outside Kubernetes. One process owns a database at a time (bbolt holds an
// exclusive file lock); every write is a transaction that bbolt syncs to
// disk before the update returns, so nothing a caller was told is stored
// is lost to a crash or a SIGKILL.
package disk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/meshguard/meshguard/controlplane/state"
)

// FileName is the database file inside the state directory.
const FileName = "state.db"

// schemaVersion is stored in the meta bucket; a database written by a newer
// meshguard is refused rather than misread.
const schemaVersion = "1"

var (
	bucketMeta        = []byte("meta")
	bucketQuarantines = []byte("quarantines")
	bucketBaselines   = []byte("baselines")
	keySchema         = []byte("schema")
)

// Options configure a Store.
type Options struct {
	// LockTimeout is how long Open waits for another process to release
	// the database (default 1s).
	LockTimeout time.Duration
	Logger      *slog.Logger
	Registerer  prometheus.Registerer
}

// Store is the bbolt-backed state store. It is safe for concurrent use.
type Store struct {
	db      *bolt.DB
	log     *slog.Logger
	metrics *state.Metrics
	subs    state.Subscribers

	writeMu sync.Mutex // one read-modify-write at a time

	mu          sync.RWMutex
	quarantines map[string]*state.Quarantine
	baselines   map[string]*state.Baseline
}

// Open opens (creating it if needed) the database in dir and loads it.
func Open(dir string, opts Options) (*Store, error) {
	if dir == "" {
		return nil, errors.New("disk: a state directory is required")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("disk: state directory: %w", err)
	}
	if opts.LockTimeout <= 0 {
		opts.LockTimeout = time.Second
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := state.NewMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, FileName)
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: opts.LockTimeout})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("disk: %s is locked by another process (one control plane per state directory)", path)
	}
	if err != nil {
		return nil, fmt.Errorf("disk: open %s: %w", path, err)
	}
	s := &Store{db: db, log: log, metrics: m, quarantines: map[string]*state.Quarantine{}, baselines: map[string]*state.Baseline{}}
	if err := s.load(); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("disk: %s: %w", path, err)
	}
	s.gauges()
	return s, nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

func (s *Store) load() error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		switch v := meta.Get(keySchema); {
		case v == nil:
			if err := meta.Put(keySchema, []byte(schemaVersion)); err != nil {
				return err
			}
		case string(v) != schemaVersion:
			return fmt.Errorf("schema version %q, this meshguard reads %q", v, schemaVersion)
		}
		for _, b := range [][]byte{bucketQuarantines, bucketBaselines} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return s.db.View(func(tx *bolt.Tx) error {
		err := tx.Bucket(bucketQuarantines).ForEach(func(k, v []byte) error {
			var q state.Quarantine
			if err := json.Unmarshal(v, &q); err != nil || q.Identity != string(k) || q.Validate() != nil {
				s.invalid(state.KindQuarantine, string(k), err, q.Validate)
				return nil
			}
			s.quarantines[q.Identity] = &q
			return nil
		})
		if err != nil {
			return err
		}
		return tx.Bucket(bucketBaselines).ForEach(func(k, v []byte) error {
			var b state.Baseline
			if err := json.Unmarshal(v, &b); err != nil || b.Destination != string(k) || b.Validate() != nil {
				s.invalid(state.KindBaseline, string(k), err, b.Validate)
				return nil
			}
			s.baselines[b.Destination] = &b
			return nil
		})
	})
}

// invalid logs a record that cannot be used. It stays in the database, for
// an operator to inspect; it is never enforced nor silently deleted.
func (s *Store) invalid(kind, key string, decodeErr error, validate func() error) {
	err := decodeErr
	if err == nil {
		err = validate()
	}
	if err == nil {
		err = errors.New("key does not match the record")
	}
	s.metrics.Invalid.WithLabelValues(kind).Inc()
	s.log.Error("state record ignored: it does not decode or validate", slog.String("kind", kind), slog.String("key", key), slog.Any("error", err))
}

func (s *Store) gauges() {
	s.metrics.Records.WithLabelValues(state.KindQuarantine).Set(float64(len(s.quarantines)))
	s.metrics.Records.WithLabelValues(state.KindBaseline).Set(float64(len(s.baselines)))
}

// Subscribe implements state.Store.
func (s *Store) Subscribe(fn func()) func() { return s.subs.Subscribe(fn) }

// Quarantines implements state.Store.
func (s *Store) Quarantines() []*state.Quarantine {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*state.Quarantine, 0, len(s.quarantines))
	for _, q := range s.quarantines {
		out = append(out, q)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Identity < out[j].Identity })
	return out
}

// Baselines implements state.Store.
func (s *Store) Baselines() []*state.Baseline {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*state.Baseline, 0, len(s.baselines))
	for _, b := range s.baselines {
		out = append(out, b)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Destination < out[j].Destination })
	return out
}

// UpdateQuarantine implements state.Store.
func (s *Store) UpdateQuarantine(ctx context.Context, identity string, fn state.QuarantineUpdate) (*state.Quarantine, error) {
	return update(ctx, s, s.quarantines, state.KindQuarantine, bucketQuarantines, identity, fn,
		func(q *state.Quarantine) string { return q.Identity })
}

// UpdateBaseline implements state.Store.
func (s *Store) UpdateBaseline(ctx context.Context, destination string, fn state.BaselineUpdate) (*state.Baseline, error) {
	return update(ctx, s, s.baselines, state.KindBaseline, bucketBaselines, destination, fn,
		func(b *state.Baseline) string { return b.Destination })
}

// record is what the store keeps: a state record that copies and checks
// itself.
type record[R any] interface {
	*R
	Clone() *R
	Validate() error
}

// update runs fn on a copy of the record at key in recs (nil when there
// is none) and stores what it returns (nil deletes) in bucket, then in
// recs: the disk first, so that memory never holds what the disk lost.
// keyOf reads a record's key, which fn may not change.
func update[R any, P record[R]](ctx context.Context, s *Store, recs map[string]*R, kind string, bucket []byte, key string,
	fn func(*R) (*R, error), keyOf func(*R) string) (*R, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	s.mu.RLock()
	cur := recs[key]
	s.mu.RUnlock()
	next, err := fn(P(cur).Clone())
	if errors.Is(err, state.ErrUnchanged) {
		return cur, nil
	}
	if err != nil {
		return nil, err
	}
	var data []byte
	if next != nil {
		if k := keyOf(next); k != key {
			return nil, fmt.Errorf("disk: update of %s %s returned a record of %s", kind, key, k)
		}
		if err := P(next).Validate(); err != nil {
			return nil, fmt.Errorf("disk: %s %s: %w", kind, key, err)
		}
		if data, err = json.Marshal(next); err != nil {
			return nil, fmt.Errorf("disk: encode %s %s: %w", kind, key, err)
		}
	}
	if err := s.write(kind, bucket, key, data); err != nil {
		return nil, err
	}
	s.mu.Lock()
	if next == nil {
		delete(recs, key)
	} else {
		recs[key] = next
	}
	s.gauges()
	s.mu.Unlock()
	s.subs.Notify()
	return next, nil
}

// write stores (data != nil) or deletes key in one synced transaction.
func (s *Store) write(kind string, bucket []byte, key string, data []byte) error {
	start := time.Now()
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		if data == nil {
			return b.Delete([]byte(key))
		}
		return b.Put([]byte(key), data)
	})
	if err != nil {
		s.metrics.Writes.WithLabelValues(kind, "error").Inc()
		s.log.Error("state write failed", slog.String("kind", kind), slog.String("key", key), slog.Any("error", err))
		return fmt.Errorf("disk: write %s %s: %w", kind, key, err)
	}
	s.metrics.Writes.WithLabelValues(kind, "ok").Inc()
	s.metrics.WriteSeconds.Observe(time.Since(start).Seconds())
	return nil
}

// Import writes records in one transaction (one sync), replacing those
// with the same keys: a bulk load, for restoring a copy or preparing a
// benchmark. Every record is validated first; one that does not validate
// fails the import and nothing is written.
func (s *Store) Import(qs []*state.Quarantine, bs []*state.Baseline) error {
	type kv struct {
		bucket []byte
		key    string
		val    []byte
	}
	var errs []error
	puts := make([]kv, 0, len(qs)+len(bs))
	for _, q := range qs {
		data, err := json.Marshal(q)
		if err == nil {
			err = q.Validate()
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("quarantine of %s: %w", q.Identity, err))
			continue
		}
		puts = append(puts, kv{bucketQuarantines, q.Identity, data})
	}
	for _, b := range bs {
		data, err := json.Marshal(b)
		if err == nil {
			err = b.Validate()
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("baseline %s: %w", b.Destination, err))
			continue
		}
		puts = append(puts, kv{bucketBaselines, b.Destination, data})
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("disk: import: %w", err)
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	err := s.db.Update(func(tx *bolt.Tx) error {
		for _, p := range puts {
			if err := tx.Bucket(p.bucket).Put([]byte(p.key), p.val); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("disk: import: %w", err)
	}
	s.mu.Lock()
	for _, q := range qs {
		s.quarantines[q.Identity] = q.Clone()
	}
	for _, b := range bs {
		s.baselines[b.Destination] = b.Clone()
	}
	s.gauges()
	s.mu.Unlock()
	s.subs.Notify()
	return nil
}
