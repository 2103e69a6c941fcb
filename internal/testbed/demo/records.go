package demo

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/meshguard/meshguard/authz/shipper"
	"github.com/meshguard/meshguard/controlplane/quarantine"
	"github.com/meshguard/meshguard/controlplane/record"
	"github.com/meshguard/meshguard/controlplane/recordstore"
	"github.com/meshguard/meshguard/controlplane/store"
)

// records is the demo control plane's record store, as `meshguard
// controlplane` keeps it, and the authz server's decision shipper.
type records struct {
	dir   string
	store *recordstore.Store
	ship  *shipper.Shipper
	stopS func() // stops the store's writer
	stopH func() // stops the shipper (sending what it holds)
	log   boundedLog
}

// startRecords opens the record store in a temporary directory.
func (m *mesh) startRecords() error {
	dir, err := os.MkdirTemp("", "meshguard-demo-")
	if err != nil {
		return err
	}
	st, err := recordstore.Open(context.Background(), recordstore.Options{Path: filepath.Join(dir, "records.db"), MaxAge: -1, Logger: m.o.Log})
	if err != nil {
		_ = os.RemoveAll(dir)
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); st.Run(ctx) }()
	m.rec = &records{dir: dir, store: st, stopS: func() { cancel(); <-done }, log: boundedLog{max: 64 << 20}}
	return nil
}

// keep stores the control plane's own records (the hooks).
func (m *mesh) keep(r record.Record) { m.rec.store.AppendOrDrop([]record.Record{r}) }

func (m *mesh) quarantineChanged(a quarantine.AuditRecord) {
	m.keep(record.FromQuarantine(a.Time, a.Action, a.Identity, a.By, a.Reason, a.Expires))
}

func (m *mesh) policyChanged(c store.Change) {
	m.keep(record.FromPolicyChange(time.Now(), c.Source, c.Version, c.Documents, c.Err))
}

// startShipper ships the authz server's decisions to the control plane's
// endpoint over mTLS with the authz server's SVID.
func (m *mesh) startShipper(svid x509svid.Source) error {
	tr := &http.Transport{TLSClientConfig: tlsconfig.MTLSClientConfig(svid, m.ids.Bundles(), tlsconfig.AuthorizeID(controlPlaneID))}
	sh, err := shipper.New(shipper.Config{URL: "https://" + m.eventsAddr, Client: &http.Client{Transport: tr, Timeout: 10 * time.Second},
		AllowSampleRate: 1, Interval: 250 * time.Millisecond, Logger: m.o.Log})
	if err != nil {
		return err
	}
	m.rec.ship = sh
	m.rec.stopH = func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = sh.Close(ctx)
		tr.CloseIdleConnections()
	}
	return nil
}

// finish ships what is left, waits for the store, and puts the incident
// timeline of the first quarantined identity and the decision log in the
// summary.
func (m *mesh) finishRecords(sum *Summary) {
	r := m.rec
	if r == nil {
		return
	}
	if r.stopH != nil {
		r.stopH()
		r.stopH = nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if m.decisions != nil {
		// The traffic has stopped: write the decision log out.
		_ = m.decisions.Close(ctx)
	}
	if err := r.store.Sync(ctx); err != nil {
		m.ui.Info("record store: %v", err)
	}
	sum.DecisionLog = r.log.bytes()
	if len(sum.Quarantined) == 0 {
		return
	}
	tl, err := r.store.Timeline(ctx, sum.Quarantined[0], recordstore.TimelineOptions{Window: 10 * time.Minute})
	if err != nil {
		m.ui.Info("incident timeline of %s: %v", sum.Quarantined[0], err)
		return
	}
	sum.Incident = tl
}

func (m *mesh) stopRecords() {
	r := m.rec
	if r == nil {
		return
	}
	if r.stopH != nil {
		r.stopH()
	}
	r.stopS()
	_ = r.store.Close()
	_ = os.RemoveAll(r.dir)
}

// boundedLog keeps the decision log's lines, up to max bytes.
type boundedLog struct {
	mu   sync.Mutex
	max  int
	buf  bytes.Buffer
	full bool
}

func (b *boundedLog) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.buf.Len()+len(p) > b.max {
		b.full = true
		return len(p), nil
	}
	return b.buf.Write(p)
}

func (b *boundedLog) bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}
