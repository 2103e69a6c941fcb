package filtercore

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
	// response :status (or err) when it completes.
	HTTPCall(cluster string, headers [][2]string, body []byte, timeoutMillis uint32, done func(status int, err error)) error
	// SharedData and SetSharedData access the VM-shared key-value store
	// with compare-and-swap.
	SharedData(key string) (value []byte, cas uint32, err error)
	SetSharedData(key string, value []byte, cas uint32) error
	// Property returns a proxy-wide property (node.cluster, node.id),
	// ok=false when it is absent.
	Property(path []string) (value []byte, ok bool)
}

// Counter is a monotonic metric.
type Counter interface{ Add(n uint64) }

// Gauge is a metric that goes up and down.
type Gauge interface{ Set(v int64) }

// Stream is what the filter needs from the proxy within one HTTP stream.
type Stream interface {
	RequestHeaders() ([][2]string, error)
	ReplaceRequestHeaders(headers [][2]string) error
	ResponseHeader(name string) (string, bool)
	// Property returns a property, ok=false when it is absent.
	Property(path []string) (value []byte, ok bool)
	SendLocalResponse(status uint32, headers [][2]string, body []byte) error
}

// Property paths read by the filter (Envoy attribute names).
var (
	PropURISANPeer = []string{"connection", "uri_san_peer_certificate"}
	PropMTLS       = []string{"connection", "mtls"}
	PropSNI        = []string{"connection", "requested_server_name"}
	PropSourceAddr = []string{"source", "address"}
	PropDestAddr   = []string{"destination", "address"}
	PropRouteName  = []string{"xds", "route_name"}
	PropConnID     = []string{"connection", "id"}
	// The Envoy node, read when the configuration lists the workloads of a
	// whole mesh (wire.FilterConfig.Workloads).
	PropNodeCluster = []string{"node", "cluster"}
	PropNodeID      = []string{"node", "id"}
)
