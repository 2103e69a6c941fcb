package main

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	_ "modernc.org/sqlite" // the same pure-Go driver the store uses

	"github.com/meshguard/meshguard/policies/wire"
)

// The floors: what this machine does at the same job without meshguard's
// code, measured in the same run, so that a figure below its target on a
// loaded 2-core machine can be read as a ratio to what is possible here.

// rawTable and rawIndexes are a table of the record store's row shape
// (dictionary ids as integers, the request's strings as text) and the
// store's indexes, written out here so that no product code is involved.
const (
	rawTable = `CREATE TABLE records (id INTEGER PRIMARY KEY, time INTEGER NOT NULL, kind INTEGER NOT NULL,
		reporter INTEGER, source INTEGER, destination INTEGER, action INTEGER, reason INTEGER, policy INTEGER, rule INTEGER,
		route INTEGER, actor INTEGER, ctx INTEGER, count INTEGER, method TEXT, path TEXT, host TEXT, source_ip TEXT,
		decision_id TEXT, request_id TEXT, trace_id TEXT, latency_us INTEGER, detail TEXT, extra TEXT)`
	rawIndexes = `CREATE INDEX records_time ON records(time);
		CREATE INDEX records_source ON records(source, time);
		CREATE INDEX records_destination ON records(destination, time);
		CREATE INDEX records_policy ON records(policy, time) WHERE policy IS NOT NULL;
		CREATE INDEX records_reason ON records(reason, time);
		CREATE INDEX records_events ON records(kind, source, time) WHERE kind > 1`
	rawCols      = 23
	rawPerInsert = 32    // rows per INSERT statement, as the store's writer
	rawPerTx     = 5_000 // rows per transaction, the store's batch
)

// rawInsertRate inserts n rows of the store's shape, prepared outside the
// timing, into a fresh SQLite database with the store's settings (WAL,
// synchronous=NORMAL, the same indexes), in transactions of the store's
// batch size with multi-row prepared INSERTs: the most any store of this
// shape can take on this machine, in rows per second.
func rawInsertRate(n int) (float64, error) {
	dir, err := os.MkdirTemp("", "incidentbench-raw-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	q := url.Values{}
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(NORMAL)")
	q.Add("_pragma", "cache_size(-32768)")
	q.Add("_txlock", "immediate")
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "raw.db")+"?"+q.Encode())
	if err != nil {
		return 0, err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	ctx := context.Background()
	if _, err := db.ExecContext(ctx, rawTable+";"+rawIndexes); err != nil {
		return 0, err
	}
	one := "(" + strings.TrimSuffix(strings.Repeat("?,", rawCols), ",") + ")"
	ins := `INSERT INTO records (time, kind, reporter, source, destination, action, reason, policy, rule, route, actor, ctx, count,
		method, path, host, source_ip, decision_id, request_id, trace_id, latency_us, detail, extra) VALUES ` +
		strings.TrimSuffix(strings.Repeat(one+",", rawPerInsert), ",")
	// The rows' values, made before the clock starts.
	r := rand.New(rand.NewPCG(7, 8))
	t0 := time.Now().Add(-time.Hour).UnixMicro()
	rows := make([][rawCols]any, n)
	for i := range rows {
		w := r.IntN(200)
		var policy any
		if r.IntN(3) > 0 {
			policy = int64(30 + w%40)
		}
		rows[i] = [rawCols]any{t0 + int64(i), int64(1), int64(1 + r.IntN(8)), int64(100 + r.IntN(2000)), int64(3000 + w),
			int64(10 + r.IntN(2)), int64(20 + r.IntN(4)), policy, int64(80), int64(4000 + w), nil, int64(5000 + w), nil,
			"GET", fmt.Sprintf("/v1/items/%d", r.IntN(5000)), fmt.Sprintf("api%d.team%d.svc:8080", w, w%40),
			fmt.Sprintf("10.%d.%d.%d", w%4, r.IntN(8), 2+r.IntN(200)), fmt.Sprintf("5f1c0a9e2b7d-%x", i),
			fmt.Sprintf("%08x-1f0e-4d1a-9a1e-0d3c8b1f2a77", i), nil, int64(20 + r.IntN(80)), nil, nil}
	}
	n -= n % rawPerInsert
	args := make([]any, 0, rawCols*rawPerInsert)
	start := time.Now()
	for i := 0; i < n; {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return 0, err
		}
		st, err := tx.PrepareContext(ctx, ins)
		if err != nil {
			return 0, errors.Join(err, tx.Rollback())
		}
		for k := 0; k < rawPerTx && i < n; k += rawPerInsert {
			args = args[:0]
			for j := i; j < i+rawPerInsert; j++ {
				args = append(args, rows[j][:]...)
			}
			if _, err := st.ExecContext(ctx, args...); err != nil {
				return 0, errors.Join(err, st.Close(), tx.Rollback())
			}
			i += rawPerInsert
		}
		if err := errors.Join(st.Close(), tx.Commit()); err != nil {
			return 0, err
		}
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// rawDecodeRate reads the decision-log file at path and decodes each line
// into a wire.Decision on GOMAXPROCS goroutines, as replay does, without
// deciding anything: the most a replay of this file can do here, in lines
// per second. (wire.DecodeDecision is the product's decoder; the read
// rate alone, without decoding, is returned too.)
func rawDecodeRate(path string) (decode, read float64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	start := time.Now()
	lines := 0
	br := bufio.NewReaderSize(f, 1<<20)
	for {
		_, err := br.ReadSlice('\n')
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return 0, 0, err
		}
		lines++
	}
	read = float64(lines) / time.Since(start).Seconds()
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return 0, 0, err
	}
	workers := runtime.GOMAXPROCS(0)
	chunks := make(chan [][]byte, 2*workers)
	var wg sync.WaitGroup
	var bad sync.Map
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var d wire.Decision
			for c := range chunks {
				for _, l := range c {
					d = wire.Decision{}
					if err := wire.DecodeDecision(l, &d); err != nil {
						bad.Store(string(l), err)
					}
				}
			}
		}()
	}
	start = time.Now()
	br.Reset(f)
	var c [][]byte
	for {
		line, err := br.ReadSlice('\n')
		if t := bytes.TrimSpace(line); len(t) > 0 {
			c = append(c, bytes.Clone(t))
			if len(c) == 512 {
				chunks <- c
				c = nil
			}
		}
		if err != nil {
			break
		}
	}
	chunks <- c
	close(chunks)
	wg.Wait()
	decode = float64(lines) / time.Since(start).Seconds()
	bad.Range(func(k, v any) bool { err = fmt.Errorf("line does not decode: %v", v); return false })
	return decode, read, err
}
