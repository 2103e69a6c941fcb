package recordstore

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

// schemaTables and schemaIndexes are schema version 1, apart so that a
// bulk load (BulkLoad) creates the indexes after the rows.
//
// Strings whose values are bounded by the mesh and its policies
// (identities, reasons, policy and rule names, routes, reporters, actions,
// who acted, and the per-workload context of a decision) are interned in
// strs; strings a client chooses (method, path, host) are not, so that a
// scanning attacker cannot grow the dictionary. strs ids are never reused
// (AUTOINCREMENT), so that readers may cache them. strs.last_used is kept
// within an hour of the newest record using the string, so that retention
// can drop entries no remaining record uses.
const (
	schemaTables = `CREATE TABLE strs (
		id INTEGER PRIMARY KEY AUTOINCREMENT,
		s TEXT NOT NULL UNIQUE,
		last_used INTEGER NOT NULL
	);
	CREATE TABLE records (
		id INTEGER PRIMARY KEY,
		time INTEGER NOT NULL,       -- unix microseconds
		kind INTEGER NOT NULL,       -- kindCodes
		reporter INTEGER, source INTEGER, destination INTEGER, action INTEGER,
		reason INTEGER, policy INTEGER, rule INTEGER, route INTEGER, actor INTEGER,
		ctx INTEGER,                 -- a decision's per-workload fields (storedContext JSON)
		count INTEGER,               -- requests a filter's report stands for; NULL: one
		method TEXT, path TEXT, host TEXT, source_ip TEXT,
		decision_id TEXT, request_id TEXT, trace_id TEXT,
		latency_us INTEGER,
		detail TEXT,
		extra TEXT                   -- a decision's rare fields (rareFields JSON)
	);`
	// The indexes fit the queries (Query reads through one of them): an
	// identity on either side, a policy, a reason, each in time order;
	// time alone; and the rare records that are not decisions (timeline
	// anchors, --kind), in a partial index that stays small.
	schemaIndexes = `CREATE INDEX records_time ON records(time);
	CREATE INDEX records_source ON records(source, time);
	CREATE INDEX records_destination ON records(destination, time);
	CREATE INDEX records_policy ON records(policy, time) WHERE policy IS NOT NULL;
	CREATE INDEX records_reason ON records(reason, time);
	CREATE INDEX records_events ON records(kind, source, time) WHERE kind > 1;`
)

// migrations are the schema versions, in order: migration i brings the
// schema to version i+1. Never edit one that has shipped; append.
var migrations = []string{
	// 1: records and the dictionary of their low-cardinality strings.
	schemaTables + "\n" + schemaIndexes,
}

// SchemaVersion is the version this build writes.
var SchemaVersion = len(migrations)

// migrate brings the database to SchemaVersion. A database written by a
// newer meshguard is refused rather than misread.
func migrate(ctx context.Context, db *sql.DB) error {
	// auto_vacuum only takes effect before the first table exists: set it
	// first so that retention can give freed pages back to the file system.
	if _, err := db.ExecContext(ctx, `PRAGMA auto_vacuum = INCREMENTAL`); err != nil {
		return fmt.Errorf("auto_vacuum: %w", err)
	}
	if _, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)`); err != nil {
		return fmt.Errorf("schema_migrations: %w", err)
	}
	var have int
	if err := db.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&have); err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	if have > SchemaVersion {
		return fmt.Errorf("schema version %d is newer than this meshguard's (%d): upgrade meshguard", have, SchemaVersion)
	}
	for v := have + 1; v <= SchemaVersion; v++ {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, migrations[v-1]); err != nil {
			_ = tx.Rollback()
			return fmt.Errorf("migration %d: %w", v, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations(version, applied_at) VALUES (?, ?)`, v, time.Now().Unix()); err != nil {
			_ = tx.Rollback()
			return fmt.Errorf("migration %d: %w", v, err)
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("migration %d: %w", v, err)
		}
	}
	return nil
}
