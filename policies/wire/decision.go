package wire

import "time"

// DecisionsPath is where the control plane accepts DecisionBatch JSON (POST)
// from authz servers, on the same authenticated listener as EventsPath.
const DecisionsPath = "/v1/decisions"

// Decision is one recorded authorization decision: a line of an authz
// server's decision log and what authz servers ship to the control plane's
// store. Its JSON is the decision-log line (authz/decisionlog writes the
// same fields without reflection; a test keeps the two in step).
//
// It carries what the policy engine read to decide, as far as it may be
// recorded, so that `meshguard policy replay` can rebuild the engine's
// attributes and decide the request again under another policy set:
// the identities as the policy model separates them (the mTLS peer, the
// client a trusted hop forwarded, the validated JWT: issuer, subject,
// principal, whether it is a JWT-SVID), addresses, SNI, the target
// workload's scope, the route, the method, host and path (without query or
// fragment, which the engine never reads), the headers the recorder was
// told to copy and the JWT claims it was told to copy. HeaderNames lists those names, so that a
// header that was copied-if-present and is absent is known to be absent;
// a header not in HeaderNames (credentials above all, which are never
// recorded) is unknown, and a re-decision that reads it is reported as not
// replayable.
type Decision struct {
	Time       time.Time `json:"time"`
	DecisionID string    `json:"decision_id"`
	RequestID  string    `json:"request_id,omitempty"`
	TraceID    string    `json:"trace_id,omitempty"`
	Protocol   string    `json:"protocol"`
	// Source is the caller as meshguard's own kinds see it
	// (policies.Attributes.Caller: the forwarded client, else the peer,
	// else the JWT-SVID's subject), and SourceMethod how it was
	// established (principal, certificate, xfcc, jwt, none). It is what
	// queries and timelines index; replay rebuilds the attributes from
	// Peer, ForwardedClient and JWT, and checks that they give Source.
	Source       string `json:"source,omitempty"`
	SourceMethod string `json:"source_method"`
	// Peer is the mTLS-authenticated peer (policies.Attributes.Peer,
	// Istio's source.principal); ForwardedClient the client a trusted hop
	// named in XFCC (policies.Attributes.ForwardedClient). Empty: none.
	Peer            string `json:"peer,omitempty"`
	ForwardedClient string `json:"forwarded_client,omitempty"`
	// MTLS: the connection was mutually authenticated.
	MTLS            bool   `json:"mtls,omitempty"`
	SourceIP        string `json:"source_ip,omitempty"`
	RemoteIP        string `json:"remote_ip,omitempty"` // only when it differs from SourceIP
	DestinationIP   string `json:"destination_ip,omitempty"`
	DestinationPort uint32 `json:"destination_port,omitempty"`
	SNI             string `json:"sni,omitempty"`
	// Destination is the target workload's SPIFFE ID; the target's scope
	// follows.
	Destination     string            `json:"destination,omitempty"`
	TargetNamespace string            `json:"target_namespace,omitempty"`
	TargetService   string            `json:"target_service,omitempty"`
	TargetGateway   string            `json:"target_gateway,omitempty"`
	TargetLabels    map[string]string `json:"target_labels,omitempty"`
	// TargetResolved: the labels, service and gateway are all the target
	// has (policies.Target.Resolved).
	TargetResolved bool         `json:"target_resolved,omitempty"`
	Method         string       `json:"method,omitempty"`
	Host           string       `json:"host,omitempty"`
	Path           string       `json:"path,omitempty"`
	Route          string       `json:"route,omitempty"`
	Scope          string       `json:"scope,omitempty"`
	JWT            *DecisionJWT `json:"jwt,omitempty"`
	// JWTSVID is the request's JWT-SVID when it also carried an end-user
	// token, which is then JWT (policies.Attributes.JWTSVID).
	JWTSVID       *DecisionJWT      `json:"jwt_svid,omitempty"`
	Allowed       bool              `json:"allowed"`
	Reason        string            `json:"reason"`
	Mode          string            `json:"mode,omitempty"`
	Policy        string            `json:"policy,omitempty"`
	Rule          string            `json:"rule,omitempty"`
	WouldDeny     bool              `json:"would_deny,omitempty"`
	Audit         bool              `json:"audit,omitempty"`
	AuditPolicy   string            `json:"audit_policy,omitempty"`
	BundleVersion string            `json:"bundle_version,omitempty"`
	Error         string            `json:"error,omitempty"`
	LatencyMicros int64             `json:"latency_us"`
	Headers       map[string]string `json:"headers,omitempty"`
	HeaderNames   []string          `json:"header_names,omitempty"`
}

// DecisionJWT is the validated JWT of a recorded decision
// (policies.Attributes.JWT: Istio's request.auth.*). Claims may hold
// personal data: only those the recorder was told to copy are recorded.
type DecisionJWT struct {
	Issuer    string `json:"issuer,omitempty"`
	Subject   string `json:"subject,omitempty"`
	Principal string `json:"principal,omitempty"` // request.auth.principal: iss/sub
	// SVID: the token was verified as a JWT-SVID, and Subject is its SPIFFE
	// ID (policies.JWT.SVID).
	SVID      bool     `json:"svid,omitempty"`
	Audiences []string `json:"audiences,omitempty"`
	Presenter string   `json:"presenter,omitempty"`
	// Claims is a JSON object of the copied claims that the token carried
	// (request.auth.claims[name] reads them); ClaimNames are the names the
	// recorder copies when present, so that a listed name missing from
	// Claims is known absent. A claim not in ClaimNames is unknown: a
	// re-decision that reads it is not replayable.
	Claims     RawJSON  `json:"claims,omitempty"`
	ClaimNames []string `json:"claim_names,omitempty"`
}

// DecisionBatch is what an authz server ships at a time.
type DecisionBatch struct {
	Reporter string `json:"reporter,omitempty"` // informational: the client certificate names the reporter
	// Dropped counts decisions the reporter lost (full buffer, rejected or
	// failed sends) since its previous accepted batch.
	Dropped   uint64     `json:"dropped,omitempty"`
	Decisions []Decision `json:"decisions"`
}
