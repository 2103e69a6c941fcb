package request

import (
	"errors"
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/encoding/protowire"
)

// DecodeCheck decodes a serialized CheckRequest into m, keeping only the
// fields FromCheck reads:
//
//	attributes.source.{address.socket_address.{address,port_value},principal,certificate}
//	attributes.destination.{address.socket_address.{address,port_value},principal,labels}
//	attributes.request.http.{id,method,headers,path,host,header_map}
//	attributes.context_extensions
//	attributes.tls_session.sni
//
// Every other field is skipped unread. On an input the protobuf runtime
// accepts, the kept fields are exactly what proto.Unmarshal would set
// (repeated messages merged, the last scalar winning, map keys replaced,
// oneofs switched, fields of an unexpected wire type skipped as unknown,
// strings checked for UTF-8); an input it refuses because of a kept field
// is refused here too. Fields that are skipped are not validated, so an
// invalid UTF-8 string in, say, the request body is ignored rather than
// refused: it is never read.
//
// All strings share one copy of data (one allocation instead of one per
// string), and the messages come from one allocation: the protobuf
// runtime's general decoder costs an authorization server more than the
// decision does.
func DecodeCheck(data []byte, m *authv3.CheckRequest) error {
	d := decoder{raw: data, buf: string(data), msgs: &messages{}}
	return d.message(0, len(data), func(num protowire.Number, typ protowire.Type, v value) error {
		if num != 1 || typ != protowire.BytesType {
			return errSkip
		}
		if m.Attributes == nil {
			m.Attributes = &d.msgs.ac
		}
		return d.attributes(v, m.Attributes)
	})
}

var (
	errSkip      = errors.New("skip")
	errTruncated = errors.New("request: malformed CheckRequest")
	errUTF8      = errors.New("request: CheckRequest string field contains invalid UTF-8")
)

// messages are the parts of one decoded CheckRequest, allocated together.
type messages struct {
	ac                 authv3.AttributeContext
	src, dst           authv3.AttributeContext_Peer
	req                authv3.AttributeContext_Request
	http               authv3.AttributeContext_HttpRequest
	tls                authv3.AttributeContext_TLSSession
	srcAddr, dstAddr   corev3.Address
	srcSock, dstSock   corev3.SocketAddress
	srcOneof, dstOneof corev3.Address_SocketAddress
	srcPort, dstPort   corev3.SocketAddress_PortValue
	hmap               corev3.HeaderMap
}

// decoder reads raw (the caller's buffer, only during DecodeCheck) and
// cuts the kept strings out of buf, its one copy, at the same offsets.
type decoder struct {
	raw  []byte
	buf  string
	msgs *messages
}

// value is a length-delimited field's payload, or a varint.
type value struct {
	start, end int
	n          uint64
}

// message walks the fields of buf[start:end], calling f for each; f
// returns errSkip for a field it does not keep (or whose wire type is not
// the one it expects: the protobuf runtime keeps such a field as unknown).
func (d *decoder) message(start, end int, f func(protowire.Number, protowire.Type, value) error) error {
	b := d.raw[start:end]
	off := start
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return errTruncated
		}
		off += n
		b = b[n:]
		var v value
		switch typ {
		case protowire.BytesType:
			l, m := protowire.ConsumeVarint(b)
			if m < 0 || l > uint64(len(b)-m) {
				return errTruncated
			}
			v = value{start: off + m, end: off + m + int(l)}
			n = m + int(l)
		case protowire.VarintType:
			x, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return errTruncated
			}
			v, n = value{n: x}, m
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return errTruncated
			}
		}
		if err := f(num, typ, v); err != nil && err != errSkip {
			return err
		}
		off += n
		b = b[n:]
	}
	return nil
}

func (d *decoder) str(v value) (string, error) {
	s := d.buf[v.start:v.end]
	if !utf8.ValidString(s) {
		return "", errUTF8
	}
	return s, nil
}

// setStr sets *dst to the string field v.
func (d *decoder) setStr(v value, dst *string) error {
	s, err := d.str(v)
	*dst = s
	return err
}

func (d *decoder) attributes(v value, ac *authv3.AttributeContext) error {
	return d.message(v.start, v.end, func(num protowire.Number, typ protowire.Type, v value) error {
		if num == 10 && ac.ContextExtensions == nil {
			// The protobuf runtime makes a map field's map before it
			// looks at the wire type; so does this.
			ac.ContextExtensions = make(map[string]string)
		}
		if typ != protowire.BytesType {
			return errSkip
		}
		switch num {
		case 1:
			if ac.Source == nil {
				ac.Source = &d.msgs.src
			}
			return d.peer(v, ac.Source, &d.msgs.srcAddr, &d.msgs.srcOneof, &d.msgs.srcSock, &d.msgs.srcPort, false)
		case 2:
			if ac.Destination == nil {
				ac.Destination = &d.msgs.dst
			}
			return d.peer(v, ac.Destination, &d.msgs.dstAddr, &d.msgs.dstOneof, &d.msgs.dstSock, &d.msgs.dstPort, true)
		case 4:
			if ac.Request == nil {
				ac.Request = &d.msgs.req
			}
			return d.request(v, ac.Request)
		case 10:
			return d.mapEntry(v, ac.ContextExtensions)
		case 12:
			if ac.TlsSession == nil {
				ac.TlsSession = &d.msgs.tls
			}
			return d.message(v.start, v.end, func(num protowire.Number, typ protowire.Type, v value) error {
				if num != 1 || typ != protowire.BytesType {
					return errSkip
				}
				return d.setStr(v, &ac.TlsSession.Sni)
			})
		}
		return errSkip
	})
}

// peer decodes a Peer; the destination's labels are kept, the source's
// are not read by anything.
func (d *decoder) peer(v value, p *authv3.AttributeContext_Peer, addr *corev3.Address, oneof *corev3.Address_SocketAddress,
	sock *corev3.SocketAddress, port *corev3.SocketAddress_PortValue, labels bool) error {
	return d.message(v.start, v.end, func(num protowire.Number, typ protowire.Type, v value) error {
		if num == 3 && labels && p.Labels == nil {
			p.Labels = make(map[string]string) // as the runtime does, whatever the wire type
		}
		if typ != protowire.BytesType {
			return errSkip
		}
		switch num {
		case 1:
			if p.Address == nil {
				p.Address = addr
			}
			return d.address(v, p.Address, oneof, sock, port)
		case 3:
			if !labels {
				return errSkip
			}
			return d.mapEntry(v, p.Labels)
		case 4:
			return d.setStr(v, &p.Principal)
		case 5:
			return d.setStr(v, &p.Certificate)
		}
		return errSkip
	})
}

// address decodes an Address: only socket_address is kept; pipe and
// envoy_internal_address, members of the same oneof, clear it.
func (d *decoder) address(v value, a *corev3.Address, oneof *corev3.Address_SocketAddress, sock *corev3.SocketAddress, port *corev3.SocketAddress_PortValue) error {
	return d.message(v.start, v.end, func(num protowire.Number, typ protowire.Type, v value) error {
		if typ != protowire.BytesType {
			return errSkip
		}
		switch num {
		case 1:
			cur, ok := a.Address.(*corev3.Address_SocketAddress)
			if !ok || cur.SocketAddress == nil {
				*sock = corev3.SocketAddress{}
				oneof.SocketAddress = sock
				a.Address = oneof
				cur = oneof
			}
			return d.socket(v, cur.SocketAddress, port)
		case 2, 3:
			// Another member of the oneof: the socket address is gone.
			// (Its contents are not read; a nil member stands in for it.)
			if num == 2 {
				a.Address = &corev3.Address_Pipe{}
			} else {
				a.Address = &corev3.Address_EnvoyInternalAddress{}
			}
		}
		return errSkip
	})
}

func (d *decoder) socket(v value, s *corev3.SocketAddress, port *corev3.SocketAddress_PortValue) error {
	return d.message(v.start, v.end, func(num protowire.Number, typ protowire.Type, v value) error {
		switch {
		case num == 2 && typ == protowire.BytesType:
			return d.setStr(v, &s.Address)
		case num == 3 && typ == protowire.VarintType:
			port.PortValue = uint32(v.n)
			s.PortSpecifier = port
			return nil
		case num == 4 && typ == protowire.BytesType:
			// named_port, the other member of the port oneof.
			s.PortSpecifier = &corev3.SocketAddress_NamedPort{}
		}
		return errSkip
	})
}

func (d *decoder) request(v value, r *authv3.AttributeContext_Request) error {
	return d.message(v.start, v.end, func(num protowire.Number, typ protowire.Type, v value) error {
		if num != 2 || typ != protowire.BytesType {
			return errSkip
		}
		if r.Http == nil {
			r.Http = &d.msgs.http
		}
		return d.http(v, r.Http)
	})
}

func (d *decoder) http(v value, h *authv3.AttributeContext_HttpRequest) error {
	return d.message(v.start, v.end, func(num protowire.Number, typ protowire.Type, v value) error {
		if num == 3 && h.Headers == nil {
			h.Headers = make(map[string]string) // as the runtime does, whatever the wire type
		}
		if typ != protowire.BytesType {
			return errSkip
		}
		var dst *string
		switch num {
		case 1:
			dst = &h.Id
		case 2:
			dst = &h.Method
		case 3:
			return d.mapEntry(v, h.Headers)
		case 4:
			dst = &h.Path
		case 5:
			dst = &h.Host
		case 13:
			if h.HeaderMap == nil {
				h.HeaderMap = &d.msgs.hmap
			}
			return d.headerMap(v, h.HeaderMap)
		default:
			return errSkip
		}
		return d.setStr(v, dst)
	})
}

func (d *decoder) headerMap(v value, hm *corev3.HeaderMap) error {
	return d.message(v.start, v.end, func(num protowire.Number, typ protowire.Type, v value) error {
		if num != 1 || typ != protowire.BytesType {
			return errSkip
		}
		hv := &corev3.HeaderValue{}
		hm.Headers = append(hm.Headers, hv)
		return d.message(v.start, v.end, func(num protowire.Number, typ protowire.Type, v value) error {
			if typ != protowire.BytesType {
				return errSkip
			}
			switch num {
			case 1:
				return d.setStr(v, &hv.Key)
			case 2:
				return d.setStr(v, &hv.Value)
			case 3:
				// bytes: no UTF-8 check, and a copy of its own (the
				// message owns its byte slices).
				hv.RawValue = append([]byte(nil), d.raw[v.start:v.end]...)
			}
			return errSkip
		})
	})
}

// mapEntry decodes one map<string,string> entry into m (a missing key or
// value is the empty string; a later entry with the same key wins).
func (d *decoder) mapEntry(v value, m map[string]string) error {
	var k, val string
	err := d.message(v.start, v.end, func(num protowire.Number, typ protowire.Type, v value) error {
		if typ != protowire.BytesType || (num != 1 && num != 2) {
			return errSkip
		}
		s, err := d.str(v)
		if num == 1 {
			k = s
		} else {
			val = s
		}
		return err
	})
	if err != nil {
		return err
	}
	m[k] = val
	return nil
}
