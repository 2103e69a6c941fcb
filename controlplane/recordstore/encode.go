package recordstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/meshguard/meshguard/controlplane/record"
	"github.com/meshguard/meshguard/policies/wire"
)

// insertCols are the columns a record writes, in the order of its row.
const insertCols = `time, kind, reporter, source, destination, action, reason, policy, rule, route, actor, ctx, count,
	method, path, host, source_ip, decision_id, request_id, trace_id, latency_us, detail, extra`

// rowCols is the number of insertCols; rowsPerInsert rows go in one
// statement (a multi-row INSERT costs the driver and the VM one call
// instead of one per row).
const (
	rowCols       = 23
	rowsPerInsert = 32
)

func insertSQL(rows int) string {
	one := "(" + strings.TrimSuffix(strings.Repeat("?,", rowCols), ",") + ")"
	return "INSERT INTO records (" + insertCols + ") VALUES " + strings.TrimSuffix(strings.Repeat(one+",", rows), ",")
}

// writerStmts are the writer connection's prepared statements.
type writerStmts struct {
	insertMany, insertOne, touch, intern *sql.Stmt
}

func prepareWriter(ctx context.Context, db *sql.DB) (writerStmts, error) {
	var ws writerStmts
	var err error
	for _, p := range []struct {
		st **sql.Stmt
		q  string
	}{
		{&ws.insertMany, insertSQL(rowsPerInsert)},
		{&ws.insertOne, insertSQL(1)},
		{&ws.touch, `UPDATE strs SET last_used = MAX(last_used, ?) WHERE id = ?`},
		{&ws.intern, `INSERT INTO strs (s, last_used) VALUES (?, ?) ON CONFLICT(s) DO UPDATE SET last_used = MAX(last_used, excluded.last_used) RETURNING id, last_used`},
	} {
		if *p.st, err = db.PrepareContext(ctx, p.q); err != nil {
			ws.close()
			return writerStmts{}, err
		}
	}
	return ws, nil
}

func (ws *writerStmts) close() {
	for _, st := range []*sql.Stmt{ws.insertMany, ws.insertOne, ws.touch, ws.intern} {
		if st != nil {
			_ = st.Close()
		}
	}
}

// encoder turns records into rows, interning their strings: the writer's
// state, used by one goroutine.
type encoder struct {
	strs   map[string]strEntry
	ctxs   map[string]string // context key → its JSON
	ctxKey []byte
	args   []any

	// Within one insert call.
	ctx           context.Context
	touch, intern *sql.Stmt
	t             int64
	err           error
}

type strEntry struct {
	id       int64
	lastUsed int64 // micros
}

func newEncoder() *encoder {
	return &encoder{strs: map[string]strEntry{}, ctxs: map[string]string{}, args: make([]any, 0, rowCols*rowsPerInsert)}
}

// forget drops the cached ids (after a rolled-back transaction).
func (e *encoder) forget() { clear(e.strs) }

// insert writes recs in tx with the writer's statements.
func (e *encoder) insert(ctx context.Context, tx *sql.Tx, ws *writerStmts, recs []record.Record) error {
	many, one := tx.StmtContext(ctx, ws.insertMany), tx.StmtContext(ctx, ws.insertOne)
	e.touch, e.intern = tx.StmtContext(ctx, ws.touch), tx.StmtContext(ctx, ws.intern)
	e.ctx, e.err = ctx, nil
	defer func() {
		for _, st := range []*sql.Stmt{many, one, e.touch, e.intern} {
			_ = st.Close()
		}
		e.touch, e.intern, e.ctx = nil, nil, nil
	}()
	args := e.args[:0]
	for i := range recs {
		var err error
		if args, err = e.row(args, &recs[i]); err != nil {
			return fmt.Errorf("record %d: %w", i, err)
		}
		if len(args) == rowCols*rowsPerInsert {
			if _, err := many.ExecContext(ctx, args...); err != nil {
				return fmt.Errorf("insert: %w", err)
			}
			clear(args)
			args = args[:0]
		}
	}
	for i := 0; i < len(args); i += rowCols {
		if _, err := one.ExecContext(ctx, args[i:i+rowCols]...); err != nil {
			return fmt.Errorf("insert: %w", err)
		}
	}
	clear(args)
	e.args = args[:0]
	return nil
}

// row appends the row of r to args.
func (e *encoder) row(args []any, r *record.Record) ([]any, error) {
	code, ok := kindCodes[r.Kind]
	if !ok {
		return args, fmt.Errorf("unknown kind %q", r.Kind)
	}
	t := r.Time.UnixMicro()
	e.t = t
	var (
		ctxJSON, extra                         string
		host, sourceIP, did, rid, tid, latency any
		count                                  any
	)
	if d := r.Decision; d != nil {
		ctxJSON, extra = e.splitDecision(d)
		host, sourceIP, did, rid, tid = nullable(d.Host), nullable(d.SourceIP), nullable(d.DecisionID), nullable(d.RequestID), nullable(d.TraceID)
		latency = d.LatencyMicros
	}
	if r.Count > 0 {
		count = int64(r.Count)
	}
	args = append(args, t, code,
		e.id(r.Reporter), e.id(r.Source), e.id(r.Destination), e.id(r.Action), e.id(r.Reason),
		e.id(r.Policy), e.id(r.Rule), e.id(r.Route), e.id(r.By), e.id(ctxJSON), count,
		nullable(r.Method), nullable(r.Path), host, sourceIP, did, rid, tid, latency, nullable(r.Detail), nullable(extra))
	return args, e.err
}

func nullable(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// touchEvery is how stale strs.last_used may get behind the newest record
// using the string (see the schema).
const touchEvery = int64(time.Hour / time.Microsecond)

// maxCachedStrs bounds the writer's cache of interned strings.
const maxCachedStrs = 1 << 18

// id is the dictionary id of v (nil for ""), inserted when new.
func (e *encoder) id(v string) any {
	if v == "" || e.err != nil {
		return nil
	}
	if en, ok := e.strs[v]; ok {
		if e.t > en.lastUsed+touchEvery {
			if _, err := e.touch.ExecContext(e.ctx, e.t, en.id); err != nil {
				e.err = fmt.Errorf("intern: %w", err)
				return nil
			}
			en.lastUsed = e.t
			e.strs[v] = en
		}
		return en.id
	}
	var en strEntry
	if err := e.intern.QueryRowContext(e.ctx, v, e.t).Scan(&en.id, &en.lastUsed); err != nil {
		e.err = fmt.Errorf("intern: %w", err)
		return nil
	}
	if len(e.strs) >= maxCachedStrs {
		clear(e.strs)
	}
	e.strs[v] = en
	return en.id
}

// storedContext is what a decision shares with the other requests of its
// workload under one bundle (and the recorder's configuration): interned
// as one dictionary string. Field names are wire.Decision's.
type storedContext struct {
	Protocol        string            `json:"protocol,omitempty"`
	SourceMethod    string            `json:"source_method,omitempty"`
	MTLS            bool              `json:"mtls,omitempty"`
	DestinationIP   string            `json:"destination_ip,omitempty"`
	DestinationPort uint32            `json:"destination_port,omitempty"`
	SNI             string            `json:"sni,omitempty"`
	TargetNamespace string            `json:"target_namespace,omitempty"`
	TargetService   string            `json:"target_service,omitempty"`
	TargetGateway   string            `json:"target_gateway,omitempty"`
	TargetLabels    map[string]string `json:"target_labels,omitempty"`
	TargetResolved  bool              `json:"target_resolved,omitempty"`
	Scope           string            `json:"scope,omitempty"`
	Mode            string            `json:"mode,omitempty"`
	Audit           bool              `json:"audit,omitempty"`
	AuditPolicy     string            `json:"audit_policy,omitempty"`
	BundleVersion   string            `json:"bundle_version,omitempty"`
	HeaderNames     []string          `json:"header_names,omitempty"`
}

// rareFields are the per-request fields of a decision that are usually
// empty; they are stored as JSON (NULL when all are). The caller is the
// record's source; Peer is absent when it is the caller (mTLS without a
// forwarding hop: the common case), "" when the request had none.
type rareFields struct {
	RemoteIP        string            `json:"remote_ip,omitempty"`
	Peer            *string           `json:"peer,omitempty"`
	ForwardedClient string            `json:"forwarded_client,omitempty"`
	JWT             *wire.DecisionJWT `json:"jwt,omitempty"`
	Headers         map[string]string `json:"headers,omitempty"`
}

// splitDecision returns the decision's per-workload context (interned:
// the same for every request to a workload under one bundle) and its rare
// fields. Together with the record's columns they give back the whole
// decision (decodeDecision).
func (e *encoder) splitDecision(d *wire.Decision) (ctxJSON, extra string) {
	// The context repeats for every request to a workload: look its JSON
	// up by its fields before encoding it.
	k := e.ctxKey[:0]
	for _, f := range [...]string{d.Protocol, d.SourceMethod, d.DestinationIP, d.SNI, d.TargetNamespace, d.TargetService,
		d.TargetGateway, d.Scope, d.Mode, d.AuditPolicy, d.BundleVersion} {
		k = append(append(k, f...), 0)
	}
	k = strconv.AppendUint(k, uint64(d.DestinationPort), 10)
	k = strconv.AppendBool(append(k, 0), d.MTLS)
	k = strconv.AppendBool(append(k, 0), d.Audit)
	k = strconv.AppendBool(append(k, 0), d.TargetResolved)
	for _, name := range slices.Sorted(maps.Keys(d.TargetLabels)) {
		k = append(append(append(append(k, 1), name...), 0), d.TargetLabels[name]...)
	}
	for _, h := range d.HeaderNames {
		k = append(append(k, 2), h...)
	}
	e.ctxKey = k
	if v, ok := e.ctxs[string(k)]; ok {
		ctxJSON = v
	} else {
		ctxJSON = encodeContext(d)
		if len(e.ctxs) >= maxCachedStrs {
			clear(e.ctxs)
		}
		e.ctxs[string(k)] = ctxJSON
	}
	rf := rareFields{RemoteIP: d.RemoteIP, ForwardedClient: d.ForwardedClient, JWT: d.JWT, Headers: d.Headers}
	if d.Peer != d.Source {
		peer := d.Peer
		rf.Peer = &peer
	}
	if rf.RemoteIP != "" || rf.Peer != nil || rf.ForwardedClient != "" || rf.JWT != nil || len(rf.Headers) > 0 {
		b, _ := json.Marshal(&rf) // strings, a map of strings and raw JSON that was decoded: cannot fail
		extra = string(b)
	}
	return ctxJSON, extra
}

func encodeContext(d *wire.Decision) string {
	c := storedContext{
		Protocol: d.Protocol, SourceMethod: d.SourceMethod, MTLS: d.MTLS,
		DestinationIP: d.DestinationIP, DestinationPort: d.DestinationPort, SNI: d.SNI,
		TargetNamespace: d.TargetNamespace, TargetService: d.TargetService, TargetGateway: d.TargetGateway, TargetLabels: d.TargetLabels,
		TargetResolved: d.TargetResolved, Scope: d.Scope, Mode: d.Mode, Audit: d.Audit, AuditPolicy: d.AuditPolicy,
		BundleVersion: d.BundleVersion, HeaderNames: d.HeaderNames,
	}
	b, _ := json.Marshal(&c) // strings, bools, ints and a map of strings: cannot fail
	return string(b)
}
