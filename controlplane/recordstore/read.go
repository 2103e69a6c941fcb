package recordstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/meshguard/meshguard/controlplane/record"
	"github.com/meshguard/meshguard/policies/wire"
)

// selectSQL reads records by their stored columns; the dictionary ids are
// resolved from the read cache (readCache), not joined row by row.
const selectSQL = `SELECT r.id, r.time, r.kind, r.reporter, r.source, r.destination, r.action, r.reason, r.policy, r.rule, r.route,
	r.actor, r.ctx, r.count, r.method, r.path, r.host, r.source_ip, r.decision_id, r.request_id, r.trace_id, r.latency_us, r.detail, r.extra
	FROM records r`

// The dictionary columns of a row, in selectSQL's order.
const (
	refReporter = iota
	refSource
	refDestination
	refAction
	refReason
	refPolicy
	refRule
	refRoute
	refActor
	refCtx
	numRefs
)

// rawRow is a row as scanned.
type rawRow struct {
	id, t, kind                                           int64
	refs                                                  [numRefs]sql.NullInt64
	count, latency                                        sql.NullInt64
	method, path, host, sip, did, rid, tid, detail, extra sql.NullString
}

// readChunk is how many rows are scanned before their dictionary ids are
// resolved together.
const readChunk = 512

// maxReadCache bounds each of the read cache's maps.
const maxReadCache = 1 << 16

// readCache holds what readers would otherwise read and decode for every
// row: dictionary strings by id (ids are never reused: AUTOINCREMENT) and
// decoded decision contexts. Shared by the readers.
type readCache struct {
	mu   sync.RWMutex
	strs map[int64]string
	ctxs map[int64]*storedContext
}

// resolve makes sure the cache holds every dictionary id of rows (reading
// the missing ones in one query of tx) and returns the strings and
// contexts to build the rows with.
func (c *readCache) resolve(ctx context.Context, tx *sql.Tx, rows []rawRow) (map[int64]string, map[int64]*storedContext, error) {
	c.mu.RLock()
	var missing []any
	seen := map[int64]bool{}
	for i := range rows {
		for _, ref := range rows[i].refs {
			if !ref.Valid || seen[ref.Int64] {
				continue
			}
			seen[ref.Int64] = true
			if _, ok := c.strs[ref.Int64]; !ok {
				missing = append(missing, ref.Int64)
			}
		}
	}
	c.mu.RUnlock()
	if len(missing) > 0 {
		got := make(map[int64]string, len(missing))
		q, err := tx.QueryContext(ctx, `SELECT id, s FROM strs WHERE id IN (`+placeholders(len(missing))+`)`, missing...)
		if err != nil {
			return nil, nil, fmt.Errorf("recordstore: dictionary: %w", err)
		}
		for q.Next() {
			var id int64
			var v string
			if err := q.Scan(&id, &v); err != nil {
				q.Close()
				return nil, nil, fmt.Errorf("recordstore: dictionary: %w", err)
			}
			got[id] = v
		}
		q.Close()
		if err := q.Err(); err != nil {
			return nil, nil, fmt.Errorf("recordstore: dictionary: %w", err)
		}
		c.mu.Lock()
		if c.strs == nil || len(c.strs)+len(got) > maxReadCache {
			c.strs = make(map[int64]string, len(got))
		}
		for id, v := range got {
			c.strs[id] = v
		}
		c.mu.Unlock()
	}
	// The contexts the rows use, decoded once.
	c.mu.Lock()
	defer c.mu.Unlock()
	strs := make(map[int64]string, len(seen))
	ctxs := map[int64]*storedContext{}
	for id := range seen {
		if v, ok := c.strs[id]; ok {
			strs[id] = v
		}
	}
	for i := range rows {
		ref := rows[i].refs[refCtx]
		if !ref.Valid || ctxs[ref.Int64] != nil {
			continue
		}
		sc := c.ctxs[ref.Int64]
		if sc == nil {
			v, ok := strs[ref.Int64]
			if !ok {
				return nil, nil, fmt.Errorf("recordstore: record %d: context %d is not in the dictionary", rows[i].id, ref.Int64)
			}
			sc = &storedContext{}
			if err := json.Unmarshal([]byte(v), sc); err != nil {
				return nil, nil, fmt.Errorf("recordstore: record %d: context: %w", rows[i].id, err)
			}
			if c.ctxs == nil || len(c.ctxs) >= maxReadCache {
				c.ctxs = map[int64]*storedContext{}
			}
			c.ctxs[ref.Int64] = sc
		}
		ctxs[ref.Int64] = sc
	}
	return strs, ctxs, nil
}

// each calls fn with every record q selects, in its order, reading in one
// transaction (one snapshot of the database).
func (s *Store) each(ctx context.Context, fn func(*record.Record) error, q string, args ...any) error {
	tx, err := s.r.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("recordstore: query: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	rows, err := tx.QueryContext(ctx, q, args...)
	if err != nil {
		return fmt.Errorf("recordstore: query: %w", err)
	}
	var rd reader
	return rd.read(ctx, s, tx, rows, fn)
}

// reader turns rows of selectSQL into records, a chunk at a time: the
// chunk's dictionary ids are resolved together.
type reader struct {
	chunk []rawRow
}

// read calls fn with the record of every row, and closes rows.
func (rd *reader) read(ctx context.Context, s *Store, tx *sql.Tx, rows *sql.Rows, fn func(*record.Record) error) error {
	defer rows.Close()
	rd.chunk = rd.chunk[:0]
	emit := func() error {
		if len(rd.chunk) == 0 {
			return nil
		}
		strs, ctxs, err := s.rc.resolve(ctx, tx, rd.chunk)
		if err != nil {
			return err
		}
		for i := range rd.chunk {
			r, err := buildRecord(&rd.chunk[i], strs, ctxs)
			if err != nil {
				return err
			}
			if err := fn(&r); err != nil {
				return err
			}
		}
		clear(rd.chunk)
		rd.chunk = rd.chunk[:0]
		return nil
	}
	for rows.Next() {
		rd.chunk = append(rd.chunk, rawRow{})
		w := &rd.chunk[len(rd.chunk)-1]
		f := &w.refs
		if err := rows.Scan(&w.id, &w.t, &w.kind, &f[refReporter], &f[refSource], &f[refDestination], &f[refAction], &f[refReason],
			&f[refPolicy], &f[refRule], &f[refRoute], &f[refActor], &f[refCtx], &w.count, &w.method, &w.path, &w.host, &w.sip,
			&w.did, &w.rid, &w.tid, &w.latency, &w.detail, &w.extra); err != nil {
			return fmt.Errorf("recordstore: scan: %w", err)
		}
		if len(rd.chunk) == readChunk {
			if err := emit(); err != nil {
				return err
			}
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("recordstore: query: %w", err)
	}
	return emit()
}

// buildRecord turns a scanned row into its record. A decision's context
// maps and slices (target labels, header names) are shared by the records
// of one read: treat them as read-only.
func buildRecord(w *rawRow, strs map[int64]string, ctxs map[int64]*storedContext) (record.Record, error) {
	str := func(i int) string {
		if ref := w.refs[i]; ref.Valid {
			return strs[ref.Int64]
		}
		return ""
	}
	r := record.Record{ID: w.id, Time: time.UnixMicro(w.t).UTC(), Kind: kindOf(w.kind),
		Reporter: str(refReporter), Source: str(refSource), Destination: str(refDestination), Action: str(refAction),
		Reason: str(refReason), Policy: str(refPolicy), Rule: str(refRule), Route: str(refRoute), By: str(refActor),
		Method: w.method.String, Path: w.path.String, Detail: w.detail.String}
	if w.count.Valid {
		r.Count = uint64(w.count.Int64)
	}
	if ref := w.refs[refCtx]; ref.Valid {
		c := ctxs[ref.Int64]
		d := &wire.Decision{
			Time: r.Time, DecisionID: w.did.String, RequestID: w.rid.String, TraceID: w.tid.String,
			Protocol: c.Protocol, Source: r.Source, SourceMethod: c.SourceMethod, Peer: r.Source, MTLS: c.MTLS,
			SourceIP: w.sip.String, DestinationIP: c.DestinationIP, DestinationPort: c.DestinationPort, SNI: c.SNI,
			Destination: r.Destination, TargetNamespace: c.TargetNamespace, TargetService: c.TargetService, TargetGateway: c.TargetGateway,
			TargetLabels: c.TargetLabels, TargetResolved: c.TargetResolved,
			Method: r.Method, Host: w.host.String, Path: r.Path, Route: r.Route, Scope: c.Scope,
			Allowed: r.Action != record.ActionDeny, Reason: r.Reason, Mode: c.Mode, Policy: r.Policy, Rule: r.Rule,
			WouldDeny: r.Action == record.ActionWouldDeny, Audit: c.Audit, AuditPolicy: c.AuditPolicy, BundleVersion: c.BundleVersion,
			Error: r.Detail, LatencyMicros: w.latency.Int64, HeaderNames: c.HeaderNames,
		}
		if w.extra.Valid {
			var rf rareFields
			if err := json.Unmarshal([]byte(w.extra.String), &rf); err != nil {
				return r, fmt.Errorf("recordstore: record %d: extra: %w", w.id, err)
			}
			d.RemoteIP, d.ForwardedClient, d.JWT, d.Headers = rf.RemoteIP, rf.ForwardedClient, rf.JWT, rf.Headers
			if rf.Peer != nil {
				d.Peer = *rf.Peer
			}
		}
		r.Decision = d
	}
	return r, nil
}
