package recordstore

import (
	"context"
	"fmt"
	"os"
	"time"
)

// deleteChunk is how many records one retention statement removes, so that
// a large deletion does not hold the write lock for long.
const deleteChunk = 20_000

// Usage is what the database holds.
type Usage struct {
	// Bytes used by pages holding data (free pages not counted).
	Bytes int64
	// FileBytes is the size of the database file and its WAL.
	FileBytes int64
	// Oldest and Newest are the times of the oldest and newest records
	// (zero when empty).
	Oldest, Newest time.Time
}

// Usage measures the database.
func (s *Store) Usage(ctx context.Context) (Usage, error) {
	var u Usage
	var pages, free, size int64
	db := s.r
	if err := db.QueryRowContext(ctx, `SELECT page_count, freelist_count, page_size FROM pragma_page_count(), pragma_freelist_count(), pragma_page_size()`).Scan(&pages, &free, &size); err != nil {
		return u, fmt.Errorf("recordstore: usage: %w", err)
	}
	u.Bytes = (pages - free) * size
	u.FileBytes = fileSize(s.opts.Path) + fileSize(s.opts.Path+"-wal")
	var oldest, newest *int64
	if err := db.QueryRowContext(ctx, `SELECT (SELECT MIN(time) FROM records), (SELECT MAX(time) FROM records)`).Scan(&oldest, &newest); err != nil {
		return u, fmt.Errorf("recordstore: usage: %w", err)
	}
	if oldest != nil {
		u.Oldest, u.Newest = time.UnixMicro(*oldest).UTC(), time.UnixMicro(*newest).UTC()
	}
	return u, nil
}

// retain runs retention and logs failures (it runs again later).
func (s *Store) retain(ctx context.Context) {
	if err := s.Retain(ctx); err != nil && ctx.Err() == nil {
		s.log.Error("record store retention failed", "error", err)
	}
}

// Retain enforces the limits now: records older than MaxAge go, then the
// oldest records until the used size is at most MaxBytes (down to 90% of
// it, so that it does not run on every write), then dictionary strings no
// remaining record can use; freed pages are given back to the file system.
// Run calls it every RetainEvery; it must not run concurrently with Run's
// writes, so outside Run call it only when Run is not running.
func (s *Store) Retain(ctx context.Context) error {
	if s.w == nil {
		return nil
	}
	deleted := false
	if s.opts.MaxAge > 0 {
		cutoff := s.opts.Now().Add(-s.opts.MaxAge).UnixMicro()
		for {
			res, err := s.w.ExecContext(ctx, `DELETE FROM records WHERE id IN (SELECT id FROM records WHERE time < ? ORDER BY time LIMIT ?)`, cutoff, deleteChunk)
			if err != nil {
				return fmt.Errorf("recordstore: retention by age: %w", err)
			}
			n, _ := res.RowsAffected()
			s.m.deleted.WithLabelValues("age").Add(float64(n))
			deleted = deleted || n > 0
			if n < deleteChunk {
				break
			}
		}
	}
	if s.opts.MaxBytes > 0 {
		for {
			used, rows, err := s.usedBytes(ctx)
			if err != nil {
				return err
			}
			if used <= s.opts.MaxBytes || rows == 0 {
				break
			}
			// Remove enough of the oldest records to come down to 90% of
			// the limit, estimating from the average record size.
			target := s.opts.MaxBytes * 9 / 10
			n := max(int64(float64(rows)*float64(used-target)/float64(used)), 1000)
			n = min(n, deleteChunk)
			res, err := s.w.ExecContext(ctx, `DELETE FROM records WHERE id IN (SELECT id FROM records ORDER BY time LIMIT ?)`, n)
			if err != nil {
				return fmt.Errorf("recordstore: retention by size: %w", err)
			}
			k, _ := res.RowsAffected()
			s.m.deleted.WithLabelValues("size").Add(float64(k))
			deleted = true
			if k == 0 {
				break
			}
		}
	}
	if deleted {
		if err := s.pruneStrings(ctx); err != nil {
			return err
		}
		// Give the freed pages back, then fold the WAL into the file.
		if _, err := s.w.ExecContext(ctx, `PRAGMA incremental_vacuum`); err != nil {
			return fmt.Errorf("recordstore: incremental vacuum: %w", err)
		}
		if _, err := s.w.ExecContext(ctx, `PRAGMA wal_checkpoint(TRUNCATE)`); err != nil {
			return fmt.Errorf("recordstore: checkpoint: %w", err)
		}
	}
	u, err := s.Usage(ctx)
	if err != nil {
		return err
	}
	s.m.bytes.Set(float64(u.Bytes))
	if !u.Oldest.IsZero() {
		s.m.oldest.Set(float64(u.Oldest.UnixNano()) / 1e9)
	}
	return nil
}

// usedBytes returns the bytes in use and an estimate of the record count
// (the id span, exact unless records were inserted out of id order).
func (s *Store) usedBytes(ctx context.Context) (used, rows int64, err error) {
	var pages, free, size int64
	var lo, hi *int64
	err = s.w.QueryRowContext(ctx, `SELECT (SELECT page_count FROM pragma_page_count()), (SELECT freelist_count FROM pragma_freelist_count()),
		(SELECT page_size FROM pragma_page_size()), (SELECT MIN(id) FROM records), (SELECT MAX(id) FROM records)`).Scan(&pages, &free, &size, &lo, &hi)
	if err != nil {
		return 0, 0, fmt.Errorf("recordstore: size: %w", err)
	}
	if lo != nil {
		rows = *hi - *lo + 1
	}
	return (pages - free) * size, rows, nil
}

// pruneStrings drops dictionary strings that no remaining record can use:
// a record of time t keeps every string it uses at last_used >= t - 1h.
func (s *Store) pruneStrings(ctx context.Context) error {
	var oldest *int64
	if err := s.w.QueryRowContext(ctx, `SELECT MIN(time) FROM records`).Scan(&oldest); err != nil {
		return fmt.Errorf("recordstore: prune: %w", err)
	}
	cutoff := int64(1<<63 - 1)
	if oldest != nil {
		cutoff = *oldest - touchEvery
	}
	if _, err := s.w.ExecContext(ctx, `DELETE FROM strs WHERE last_used < ?`, cutoff); err != nil {
		return fmt.Errorf("recordstore: prune: %w", err)
	}
	for k, e := range s.enc.strs {
		if e.lastUsed < cutoff {
			delete(s.enc.strs, k)
		}
	}
	return nil
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}
