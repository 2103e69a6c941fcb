package console

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/meshguard/meshguard/controlplane/quarantine"
)

// Manager adapts the control plane's quarantine manager: the console calls
// the same methods as the admin API, so its changes are stored, published
// and audited alike.
func Manager(m *quarantine.Manager) Quarantiner { return manager{m} }

type manager struct{ m *quarantine.Manager }

func view(e quarantine.Entry) Quarantine {
	q := Quarantine{Identity: e.Identity, Reason: e.Reason, By: e.By, Profile: e.Profile,
		Detector: e.Detector, CreatedAt: e.CreatedAt, ExpiresAt: e.ExpiresAt, Pending: e.Pending}
	for _, ev := range e.Evidence {
		q.Evidence = append(q.Evidence, Evidence{Reporter: ev.Reporter, Detector: ev.Detector, Destination: ev.Destination,
			Route: ev.Route, Detail: ev.Detail, Received: ev.Received})
	}
	return q
}

func (a manager) Quarantines() []Quarantine {
	es := a.m.List()
	out := make([]Quarantine, 0, len(es))
	for _, e := range es {
		out = append(out, view(e))
	}
	return out
}

func (a manager) History() []QuarantineChange {
	rs := a.m.Audit()
	out := make([]QuarantineChange, 0, len(rs))
	for _, r := range rs {
		out = append(out, QuarantineChange{Time: r.Time, Action: r.Action, Identity: r.Identity, By: r.By,
			Reason: r.Reason, Expires: r.Expires})
	}
	return out
}

func (a manager) Quarantine(ctx context.Context, identity, reason, by string, d time.Duration) (Quarantine, error) {
	e, err := a.m.Add(ctx, quarantine.AddRequest{Identity: identity, Reason: reason, By: by, For: d})
	if err != nil {
		return Quarantine{}, kindOf(err)
	}
	return view(e), nil
}

func (a manager) Release(ctx context.Context, identity, reason, by string) error {
	return kindOf(a.m.Release(ctx, identity, by, reason))
}

// kindOf maps the manager's errors to the console's.
func kindOf(err error) error {
	for _, k := range []struct{ from, to error }{
		{quarantine.ErrInvalid, ErrInvalid}, {quarantine.ErrNotQuarantined, ErrNotQuarantined},
		{quarantine.ErrLimit, ErrLimit}, {quarantine.ErrStore, ErrUnavailable},
	} {
		if errors.Is(err, k.from) {
			return fmt.Errorf("%w: %v", k.to, err)
		}
	}
	return err
}
