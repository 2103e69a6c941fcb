package requestauth

import (
	"errors"

	"github.com/meshguard/meshguard/policies"
)

// status is why a token was refused. The texts are jwt_verify_lib's (what
// Envoy's jwt_authn filter answers in the body of its 401), and meshguard's
// own for the checks it adds.
type status uint8

const (
	statusBadFormat status = iota + 1
	statusHeaderBase64
	statusHeaderJSON
	statusHeaderAlg
	statusAlgNotAccepted
	statusHeaderKid
	statusHeaderCrit
	statusPayloadBase64
	statusPayloadJSON
	statusIssNotString
	statusSubNotString
	statusJtiNotString
	statusIatNotInteger
	statusNbfNotInteger
	statusExpNotInteger
	statusAudNotString
	statusUnknownIssuer
	statusNotYetValid
	statusExpired
	statusAudience
	statusKeysUnavailable
	statusKidAlgMismatch
	statusVerification
	statusTooLarge
	statusTooMany
	statusSeveral
)

var statusText = map[status]string{
	statusBadFormat:       "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
	statusHeaderBase64:    "Jwt header is an invalid Base64url encoded",
	statusHeaderJSON:      "Jwt header is an invalid JSON",
	statusHeaderAlg:       "Jwt header [alg] field is required and must be a string",
	statusAlgNotAccepted:  "Jwt header [alg] is not accepted (RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, ES512, EdDSA)",
	statusHeaderKid:       "Jwt header [kid] field is not a string",
	statusHeaderCrit:      "Jwt header [crit] is not supported",
	statusPayloadBase64:   "Jwt payload is an invalid Base64url encoded",
	statusPayloadJSON:     "Jwt payload is an invalid JSON",
	statusIssNotString:    "Jwt payload [iss] field is not a string",
	statusSubNotString:    "Jwt payload [sub] field is not a string",
	statusJtiNotString:    "Jwt payload [jti] field is not a string",
	statusIatNotInteger:   "Jwt payload [iat] field is not an integer",
	statusNbfNotInteger:   "Jwt payload [nbf] field is not an integer",
	statusExpNotInteger:   "Jwt payload [exp] field is not an integer",
	statusAudNotString:    "Jwt payload [aud] field is not a string or string list",
	statusUnknownIssuer:   "Jwt issuer is not configured",
	statusNotYetValid:     "Jwt not yet valid",
	statusExpired:         "Jwt is expired",
	statusAudience:        "Audiences in Jwt are not allowed",
	statusKeysUnavailable: "Jwks remote fetch is failed",
	statusKidAlgMismatch:  "Jwks doesn't have key to match kid or alg from Jwt",
	statusVerification:    "Jwt verification fails",
	statusTooLarge:        "Jwt is too large",
	statusTooMany:         "too many tokens in the request",
	statusSeveral:         "several different valid tokens in the request: the request principal would be ambiguous",
}

var errTrailing = errors.New("data after the JSON value")

// failure is a refused token (or request): Reason and HTTPStatus are what
// the server answers with.
type failure struct {
	st     status
	detail string
}

func fail(st status) *failure { return &failure{st: st} }

// Failure is why Authenticate refused a request.
type Failure struct {
	// Reason is policies.ReasonDeniedToken, or ReasonDeniedTokenAudience
	// when the token's audiences are the only fault (Envoy answers 403
	// then, 401 otherwise).
	Reason policies.Reason
	// Status is the HTTP status: 401, or 403 for an audience not allowed.
	Status int
	// Message is the text Envoy's jwt_authn filter answers with
	// ("Jwt is expired", ...).
	Message string
	// Location says where the refused token was (for logs); Err the detail.
	Location string
	Err      error
}

func (f *Failure) Error() string {
	if f.Err != nil {
		return "request authentication: " + f.Location + ": " + f.Message + ": " + f.Err.Error()
	}
	return "request authentication: " + f.Location + ": " + f.Message
}

func (f *failure) public(loc string) *Failure {
	out := &Failure{Reason: policies.ReasonDeniedToken, Status: 401, Message: statusText[f.st], Location: loc}
	if f.st == statusAudience {
		out.Reason, out.Status = policies.ReasonDeniedTokenAudience, 403
	}
	if f.detail != "" {
		out.Err = errors.New(f.detail)
	}
	return out
}
