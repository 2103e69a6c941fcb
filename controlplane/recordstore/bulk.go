package recordstore

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"os"
	"time"

	"github.com/meshguard/meshguard/controlplane/record"
)

// bulkBatch is how many records one bulk-load transaction writes.
const bulkBatch = 100_000

// BulkLoad creates a record store at path, which must not exist, from the
// records next fills in (until it returns false), and returns how many it
// wrote. The rows are encoded as the store's writer encodes them, in large
// transactions without a journal, and the indexes are built after the
// rows and analyzed: a store of millions of records is built in minutes
// rather than hours. It is for building a store at once (benchmark
// fixtures, imports), not for a store a control plane is using.
func BulkLoad(ctx context.Context, path string, next func(*record.Record) bool) (n int, err error) {
	if _, err := os.Stat(path); err == nil {
		return 0, fmt.Errorf("recordstore: bulk load: %s exists", path)
	}
	q := url.Values{}
	q.Add("_pragma", "journal_mode(OFF)")
	q.Add("_pragma", "synchronous(OFF)")
	q.Add("_pragma", "cache_size(-262144)")
	q.Add("_pragma", "temp_store(MEMORY)")
	db, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		return 0, fmt.Errorf("recordstore: bulk load: %w", err)
	}
	db.SetMaxOpenConns(1)
	defer func() {
		if cerr := db.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("recordstore: bulk load: %w", cerr)
		}
		if err != nil {
			_ = os.Remove(path)
		}
	}()
	for _, stmt := range []string{
		`PRAGMA auto_vacuum = INCREMENTAL`,
		`CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)`,
		schemaTables,
	} {
		if _, err := db.ExecContext(ctx, stmt); err != nil {
			return 0, fmt.Errorf("recordstore: bulk load: schema: %w", err)
		}
	}
	ws, err := prepareWriter(ctx, db)
	if err != nil {
		return 0, fmt.Errorf("recordstore: bulk load: %w", err)
	}
	defer ws.close()
	enc := newEncoder()
	batch := make([]record.Record, 0, bulkBatch)
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		if err := enc.insert(ctx, tx, &ws, batch); err != nil {
			_ = tx.Rollback()
			return err
		}
		n += len(batch)
		clear(batch)
		batch = batch[:0]
		return tx.Commit()
	}
	for {
		batch = append(batch, record.Record{})
		if !next(&batch[len(batch)-1]) {
			batch = batch[:len(batch)-1]
			break
		}
		if len(batch) == bulkBatch {
			if err := flush(); err != nil {
				return n, fmt.Errorf("recordstore: bulk load: %w", err)
			}
		}
	}
	if err := flush(); err != nil {
		return n, fmt.Errorf("recordstore: bulk load: %w", err)
	}
	for _, stmt := range []string{schemaIndexes, `PRAGMA analysis_limit = 2000`, `ANALYZE`} {
		if _, err := db.ExecContext(ctx, stmt); err != nil {
			return n, fmt.Errorf("recordstore: bulk load: indexes: %w", err)
		}
	}
	if _, err := db.ExecContext(ctx, `INSERT INTO schema_migrations(version, applied_at) VALUES (?, ?)`, SchemaVersion, time.Now().Unix()); err != nil {
		return n, fmt.Errorf("recordstore: bulk load: %w", err)
	}
	var mode string
	if err := db.QueryRowContext(ctx, `PRAGMA journal_mode = WAL`).Scan(&mode); err != nil {
		return n, fmt.Errorf("recordstore: bulk load: WAL mode: %w", err)
	}
	if mode != "wal" {
		return n, fmt.Errorf("recordstore: bulk load: journal mode %q, want wal", mode)
	}
	return n, nil
}
