package identity

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"

	"github.com/meshguard/meshguard/policies"
)

// The JWT-SVID checks: the token from its header, validated by go-spiffe
// with a mandatory audience, then its lifetime and clock.

// Token is the token the JWT-SVID path reads from h, if any (false also
// when the path is off).
func (r *Resolver) Token(h policies.HeaderGetter) (string, bool) {
	if !r.jwtOn || h == nil {
		return "", false
	}
	return r.token(h.Get)
}

func (r *Resolver) token(get func(string) (string, bool)) (string, bool) {
	v, ok := get(r.jwtHeader)
	if !ok {
		return "", false
	}
	if r.jwtHeader != "authorization" {
		return strings.TrimSpace(v), true
	}
	scheme, tok, found := strings.Cut(strings.TrimSpace(v), " ")
	if !found || !strings.EqualFold(scheme, "bearer") {
		// Another scheme (Basic, ...) carries no JWT-SVID.
		return "", false
	}
	return strings.TrimSpace(tok), true
}

func (r *Resolver) jwt(tok string) (*policies.JWT, error) {
	if len(tok) > maxTokenBytes {
		return nil, fmt.Errorf("token of %d bytes exceeds %d", len(tok), maxTokenBytes)
	}
	if len(r.audiences) == 0 {
		// Unreachable through New; go-spiffe skips the audience check on an
		// empty list, so never call it that way.
		return nil, errors.New("no audience configured")
	}
	svid, err := jwtsvid.ParseAndValidate(tok, r.bundles, r.audiences)
	if err != nil {
		return nil, err
	}
	if err := workload(svid.ID); err != nil {
		return nil, err
	}
	now := r.now()
	exp, _ := numericClaim(svid.Claims, "exp")
	if !now.Add(-r.skew).Before(exp) {
		return nil, fmt.Errorf("%s: token expired at %s", svid.ID, exp.UTC().Format(time.RFC3339))
	}
	if nbf, ok := numericClaim(svid.Claims, "nbf"); ok && nbf.After(now.Add(r.skew)) {
		return nil, fmt.Errorf("%s: token not valid before %s", svid.ID, nbf.UTC().Format(time.RFC3339))
	}
	start, ok := numericClaim(svid.Claims, "iat")
	if ok && start.After(now.Add(r.skew)) {
		return nil, fmt.Errorf("%s: token issued in the future (%s)", svid.ID, start.UTC().Format(time.RFC3339))
	}
	if !ok {
		// Without iat the lifetime is unknown: count it from now.
		start = now
	}
	if life := exp.Sub(start); life > r.maxLifetime {
		return nil, fmt.Errorf("%s: token lifetime %s exceeds %s", svid.ID, life, r.maxLifetime)
	}
	iss, _ := svid.Claims["iss"].(string)
	azp, _ := svid.Claims["azp"].(string)
	principal := svid.ID.String()
	if iss != "" {
		principal = iss + "/" + principal
	}
	return &policies.JWT{
		Subject:   svid.ID.String(),
		SVID:      svid.ID,
		Principal: principal,
		Issuer:    iss,
		Audiences: svid.Audience,
		Presenter: azp,
		Claims:    svid.Claims,
	}, nil
}

func numericClaim(claims map[string]any, name string) (time.Time, bool) {
	switch v := claims[name].(type) {
	case float64:
		return time.Unix(int64(v), 0), true
	case int64:
		return time.Unix(v, 0), true
	}
	return time.Time{}, false
}
