// Package xdsvalidate validates Envoy configuration in depth.
//
// go-control-plane's generated ValidateAll checks a message and the
// messages nested in it, but stops at google.protobuf.Any: the typed_config
// of a filter, a listener filter or a transport socket, a route's
// typed_per_filter_config, a cluster's protocol options, an ECDS resource and
// what they pack in turn are opaque to it. All unpacks every Any it meets, at
// any depth, with the message types linked into the binary, and validates
// what is inside with that type's own generated validator. A packed type
// that is not linked in, that does not decode, or that carries fields its Go
// type does not know is an error: what cannot be checked is refused, never
// skipped.
//
// The control plane's generator runs it on every resource it emits, and the
// tests of deploy/ on every static Envoy file shipped there.
package xdsvalidate

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"sync"

	wasmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/wasm/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
)

// maxDepth bounds how many Anys may nest: Envoy's own configuration nests
// three or four (listener → HCM → filter → its per-route config).
const maxDepth = 16

// All validates m with its generated ValidateAll, then every message packed
// in it (in an Any, or in a TypedStruct) the same way, recursively. The
// error joins every problem found; each names its path from m, e.g.
//
//	filter_chains[0].filters[0].typed_config<envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager>: invalid HttpConnectionManager.StatPrefix: ...
func All(m proto.Message) error {
	return (*Memo)(nil).All(m)
}

// Packed validates, as All does, every message packed in m, but not m
// itself: for a partial configuration whose own required fields come from
// what it is merged into (an Istio EnvoyFilter MERGE patch).
func Packed(m proto.Message) error {
	if m == nil {
		return errors.New("xdsvalidate: no message")
	}
	v := &validator{}
	v.walk("", m.ProtoReflect(), 0)
	return errors.Join(v.errs...)
}

// Memo validates like All and remembers the packed messages it found
// valid, by their type and bytes (SHA-256), so that a configuration packed
// again (the same filter in the resources of a thousand nodes) is unpacked
// and checked once; and it walks only into the parts of a message whose
// type can hold a packed message. That is for configuration this build
// produced itself, the generator's: unlike All it does not look for
// unknown fields in the parts it does not walk. It is safe for concurrent
// use; a nil *Memo is All.
type Memo struct {
	mu   sync.Mutex
	max  int
	seen map[[sha256.Size]byte]struct{}
	// packs tells, per message type, whether a message of it can hold a
	// packed message or one a load rule checks: walks skip those that
	// cannot.
	packs map[protoreflect.FullName]bool
}

// NewMemo returns a Memo that remembers up to max packed messages, then
// starts over.
func NewMemo(max int) *Memo {
	return &Memo{max: max, seen: map[[sha256.Size]byte]struct{}{}, packs: map[protoreflect.FullName]bool{}}
}

// mayPack reports whether a message of type md can hold, at any depth, an
// Any or a message a load rule checks. Without a memo it answers true:
// the walk then looks everywhere.
func (c *Memo) mayPack(md protoreflect.MessageDescriptor) bool {
	if c == nil {
		return true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if v, ok := c.packs[md.FullName()]; ok {
		return v
	}
	v := reaches(md)
	c.packs[md.FullName()] = v
	return v
}

// reaches searches the type graph from md for an Any or a type a load rule
// checks.
func reaches(md protoreflect.MessageDescriptor) bool {
	seen := map[protoreflect.FullName]bool{}
	queue := []protoreflect.MessageDescriptor{md}
	for len(queue) > 0 {
		d := queue[0]
		queue = queue[1:]
		if seen[d.FullName()] {
			continue
		}
		seen[d.FullName()] = true
		if _, ok := loadRules[d.FullName()]; ok || d.FullName() == anyName {
			return true
		}
		fields := d.Fields()
		for i := 0; i < fields.Len(); i++ {
			fd := fields.Get(i)
			if fd.IsMap() {
				fd = fd.MapValue()
			}
			if m := fd.Message(); m != nil {
				queue = append(queue, m)
			}
		}
	}
	return false
}

// All validates m as the package's All does.
func (c *Memo) All(m proto.Message) error {
	if m == nil {
		return errors.New("xdsvalidate: no message")
	}
	v := &validator{memo: c}
	v.root("", m.ProtoReflect(), 0)
	return errors.Join(v.errs...)
}

func memoKey(a *anypb.Any) [sha256.Size]byte {
	h := sha256.New()
	h.Write([]byte(a.GetTypeUrl()))
	h.Write([]byte{0})
	h.Write(a.GetValue())
	var k [sha256.Size]byte
	h.Sum(k[:0])
	return k
}

func (c *Memo) known(k [sha256.Size]byte) bool {
	if c == nil {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.seen[k]
	return ok
}

func (c *Memo) remember(k [sha256.Size]byte) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.seen) >= c.max {
		clear(c.seen)
	}
	c.seen[k] = struct{}{}
}

type validator struct {
	memo *Memo
	errs []error
}

func (v *validator) fail(path string, err error) {
	if path == "" {
		path = "(root)"
	}
	v.errs = append(v.errs, fmt.Errorf("%s: %w", path, err))
}

// root validates a message that no validator has seen yet (the top one, or
// one unpacked from an Any): its own ValidateAll covers it and every
// message nested in it but the Anys, which walk finds.
func (v *validator) root(path string, m protoreflect.Message, depth int) {
	switch x := m.Interface().(type) {
	case interface{ ValidateAll() error }:
		if err := x.ValidateAll(); err != nil {
			v.fail(path, err)
		}
	default:
		// Only the well-known types (wrappers, Struct, Duration, ...) come
		// without a validator: they have no constraints to check.
		if !strings.HasPrefix(string(m.Descriptor().FullName()), "google.protobuf.") {
			v.fail(path, fmt.Errorf("%s has no generated validator", m.Descriptor().FullName()))
			return
		}
	}
	v.walk(path, m, depth)
}

// walk looks for packed messages in m and in everything nested in it, and
// applies the load rules.
func (v *validator) walk(path string, m protoreflect.Message, depth int) {
	if len(m.GetUnknown()) > 0 {
		v.fail(path, fmt.Errorf("%s carries fields this build does not know", m.Descriptor().FullName()))
	}
	if rule, ok := loadRules[m.Descriptor().FullName()]; ok {
		if err := rule(m.Interface()); err != nil {
			v.fail(path, err)
		}
	}
	m.Range(func(fd protoreflect.FieldDescriptor, val protoreflect.Value) bool {
		if fd.Message() == nil || (fd.IsMap() && fd.MapValue().Message() == nil) {
			return true
		}
		if vd := fd.Message(); fd.IsMap() {
			if !v.memo.mayPack(fd.MapValue().Message()) {
				return true
			}
		} else if !v.memo.mayPack(vd) {
			return true
		}
		name := join(path, string(fd.Name()))
		switch {
		case fd.IsList():
			l := val.List()
			for i := 0; i < l.Len(); i++ {
				v.field(fmt.Sprintf("%s[%d]", name, i), l.Get(i).Message(), depth)
			}
		case fd.IsMap():
			val.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				v.field(fmt.Sprintf("%s[%q]", name, k.String()), mv.Message(), depth)
				return true
			})
		default:
			v.field(name, val.Message(), depth)
		}
		return true
	})
}

func (v *validator) field(path string, m protoreflect.Message, depth int) {
	if m.Descriptor().FullName() == anyName {
		v.unpack(path, m, depth)
		return
	}
	v.walk(path, m, depth)
}

const (
	anyName              protoreflect.FullName = "google.protobuf.Any"
	typedStructName      protoreflect.FullName = "xds.type.v3.TypedStruct"
	udpaTypedStructName  protoreflect.FullName = "udpa.type.v1.TypedStruct"
	typedStructTypeField                       = "type_url"
	typedStructValue                           = "value"
)

// unpack validates the message packed in an Any.
func (v *validator) unpack(path string, m protoreflect.Message, depth int) {
	a, ok := m.Interface().(*anypb.Any)
	if !ok {
		a = &anypb.Any{}
		proto.Merge(a, m.Interface())
	}
	if depth >= maxDepth {
		v.fail(path, fmt.Errorf("packed messages nest deeper than %d", maxDepth))
		return
	}
	if a.GetTypeUrl() == "" {
		v.fail(path, errors.New("an Any without a type"))
		return
	}
	var key [sha256.Size]byte
	if v.memo != nil {
		key = memoKey(a)
		if v.memo.known(key) {
			return
		}
		before := len(v.errs)
		defer func() {
			if len(v.errs) == before {
				v.memo.remember(key)
			}
		}()
	}
	mt, err := protoregistry.GlobalTypes.FindMessageByURL(a.GetTypeUrl())
	if err != nil {
		v.fail(path, fmt.Errorf("type %s is not linked into this build: cannot validate it", a.GetTypeUrl()))
		return
	}
	inner := mt.New()
	if err := (proto.UnmarshalOptions{}).Unmarshal(a.GetValue(), inner.Interface()); err != nil {
		v.fail(path, fmt.Errorf("%s does not decode: %w", a.GetTypeUrl(), err))
		return
	}
	path = fmt.Sprintf("%s<%s>", path, inner.Descriptor().FullName())
	switch inner.Descriptor().FullName() {
	case anyName:
		v.unpack(path, inner, depth+1)
	case typedStructName, udpaTypedStructName:
		v.typedStruct(path, inner, depth+1)
	default:
		v.root(path, inner, depth+1)
	}
}

// typedStruct validates the message a TypedStruct describes as JSON, decoded
// strictly into its type.
func (v *validator) typedStruct(path string, m protoreflect.Message, depth int) {
	fields := m.Descriptor().Fields()
	url := m.Get(fields.ByName(typedStructTypeField)).String()
	mt, err := protoregistry.GlobalTypes.FindMessageByURL(url)
	if err != nil {
		v.fail(path, fmt.Errorf("type %s is not linked into this build: cannot validate it", url))
		return
	}
	st := &structpb.Struct{}
	if fv := m.Get(fields.ByName(typedStructValue)); fv.Message().IsValid() {
		proto.Merge(st, fv.Message().Interface())
	}
	js, err := protojson.Marshal(st)
	if err != nil {
		v.fail(path, err)
		return
	}
	inner := mt.New()
	if err := protojson.Unmarshal(js, inner.Interface()); err != nil {
		v.fail(path, fmt.Errorf("%s does not decode: %w", url, err))
		return
	}
	v.root(fmt.Sprintf("%s<%s>", path, inner.Descriptor().FullName()), inner, depth)
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

// loadRules are checks Envoy makes when it loads a configuration that its
// proto annotations, and so the generated validators, do not state.
var loadRules = map[protoreflect.FullName]func(proto.Message) error{
	"envoy.extensions.wasm.v3.PluginConfig": wasmPlugin,
}

// wasmPlugin: a plugin without a VM has no runtime, and Envoy refuses it
// ("Failed to create Wasm VM with unspecified runtime"); a VM without code
// has nothing to load.
func wasmPlugin(m proto.Message) error {
	p, ok := m.(*wasmv3.PluginConfig)
	if !ok {
		return fmt.Errorf("wasm plugin config of type %T", m)
	}
	vm := p.GetVmConfig()
	switch {
	case vm == nil:
		return errors.New("wasm plugin without vm_config")
	case vm.GetRuntime() == "":
		return errors.New("wasm plugin vm_config without runtime")
	case vm.GetCode().GetLocal() == nil && vm.GetCode().GetRemote() == nil:
		return errors.New("wasm plugin vm_config without code")
	}
	return nil
}
