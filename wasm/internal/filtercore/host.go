package filtercore

import "strings"

// Level is a log level.
type Level uint8

// Log levels.
const (
	LevelDebug Level = iota
	LevelInfo
	LevelWarn
	LevelError
	LevelCritical
)

// Host is what the filter needs from the proxy outside of a stream.
type Host interface {
	Log(level Level, msg string)
	// Now is the wall clock in unix nanoseconds.
	Now() int64
	DefineCounter(name string) Counter
	DefineGauge(name string) Gauge
	// HTTPCall sends a request to an upstream cluster; done runs with the
	// response when it completes. The response body is read only when it
	// has at most maxBody bytes (0: never).
	HTTPCall(cluster string, headers [][2]string, body []byte, timeoutMillis uint32, maxBody int, done func(CallResponse)) error
	// SharedData and SetSharedData access the VM-shared key-value store
	// with compare-and-swap.
	SharedData(key string) (value []byte, cas uint32, err error)
	SetSharedData(key string, value []byte, cas uint32) error
	// Property returns a proxy-wide property (node.cluster, node.id),
	// ok=false when it is absent.
	Property(p Prop) (value []byte, ok bool)
}

// CallResponse is the answer to an HTTPCall.
type CallResponse struct {
	// Status is the :status; 0 when the call failed (reset, timeout, no
	// healthy upstream), as Envoy reports a failed call.
	Status int
	// Headers are the response headers, :status included.
	Headers [][2]string
	// Body is the response body when it was read (see HTTPCall).
	Body []byte
	// BodyTooLarge says that the body had more than maxBody bytes and was
	// not read.
	BodyTooLarge bool
}

// Header returns the value of the response header name (lower case).
func (r *CallResponse) Header(name string) (string, bool) {
	for _, kv := range r.Headers {
		if kv[0] == name {
			return kv[1], true
		}
	}
	return "", false
}

// Counter is a monotonic metric.
type Counter interface{ Add(n uint64) }

// Gauge is a metric that goes up and down.
type Gauge interface{ Set(v int64) }

// Stream is what the filter needs from the proxy within one HTTP stream.
type Stream interface {
	// RequestHeaders returns the request headers. The slice and its
	// strings may be scratch memory lent for the current callback: the
	// filter neither keeps nor modifies them past it.
	RequestHeaders() ([][2]string, error)
	// ReplaceRequestHeaders replaces the whole header map.
	ReplaceRequestHeaders(headers [][2]string) error
	// AddRequestHeader adds one header value.
	AddRequestHeader(name, value string) error
	ResponseHeader(name string) (string, bool)
	// Property returns a property, ok=false when it is absent. The value
	// may be scratch memory, like RequestHeaders.
	Property(p Prop) (value []byte, ok bool)
	SendLocalResponse(status uint32, headers [][2]string, body []byte) error
}

// Prop is a property path (an Envoy attribute name) with its proxy-wasm
// serialization, the segments joined by NUL bytes, made once.
type Prop struct {
	Path []string
	Wire string
}

func newProp(path ...string) Prop { return Prop{Path: path, Wire: strings.Join(path, "\x00")} }

// Property paths read by the filter.
var (
	PropURISANPeer = newProp("connection", "uri_san_peer_certificate")
	PropMTLS       = newProp("connection", "mtls")
	PropSNI        = newProp("connection", "requested_server_name")
	PropSourceAddr = newProp("source", "address")
	PropDestAddr   = newProp("destination", "address")
	PropRouteName  = newProp("xds", "route_name")
	PropConnID     = newProp("connection", "id")
	// The Envoy node, read when the configuration lists the workloads of a
	// whole mesh (wire.FilterConfig.Workloads).
	PropNodeCluster = newProp("node", "cluster")
	PropNodeID      = newProp("node", "id")
	// The node's labels, read when the workload's labels come from the
	// node (wire.LabelsFromNode): Istio's proxies carry their pod's labels
	// in node metadata LABELS, which Envoy returns as a string map.
	PropNodeLabels = newProp("node", "metadata", "LABELS")
	// The node's namespace and service account (Istio's proxies carry
	// them), for the workload's own identity on the outbound side.
	PropNodeNamespace      = newProp("node", "metadata", "NAMESPACE")
	PropNodeServiceAccount = newProp("node", "metadata", "SERVICE_ACCOUNT")
	// The listener's traffic_direction (an int: 1 inbound, 2 outbound),
	// read once per connection with direction "listener".
	PropListenerDirection = newProp("listener_direction")
	// The route's upstream cluster: the destination of an outbound request.
	PropClusterName = newProp("xds", "cluster_name")
)
