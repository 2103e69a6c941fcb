package strictjson

import "unsafe"

// Kind is how a struct field is stored and coded. Every kind names one
// Go memory layout; the generated tables pick the kind from the field's
// type, so that the interpreter below reads and writes fields through
// their offsets without reflection.
type Kind uint8

// Field kinds.
const (
	KString     Kind = iota // string, or a named type whose underlying type is string
	KBool                   // bool
	KInt                    // int
	KInt64                  // int64
	KUint32                 // uint32
	KUint64                 // uint64
	KFloat64                // float64
	KStruct                 // a struct described by Field.Type
	KPtrStruct              // a pointer to one
	KPtrFloat64             // *float64
	KStrings                // []string
	KStructs                // a slice of structs described by Field.Type
	KStringMap              // map[string]string
	KRaw                    // json.RawMessage (decoding only)
	KCustom                 // decoded by Field.Decode, encoded as KString
	KStructMap              // map[string]S, S described by Field.Type (decoding only)
)

// Type describes a struct type for the interpreter.
type Type struct {
	Name   string // Go type name, for error messages
	Fields []Field
	Size   uintptr
	// New returns a new zero value (for KPtrStruct fields); Grow appends
	// one zero element to the slice it points to (for KStructs fields).
	New  func() unsafe.Pointer
	Grow func(slice unsafe.Pointer)
	// Map operations on a map[string]T field at m (for KStructMap fields
	// whose element type this is): make it if nil, set it to nil, store
	// the value at v under key.
	MapMake func(m unsafe.Pointer)
	MapNil  func(m unsafe.Pointer)
	MapPut  func(m unsafe.Pointer, key string, v unsafe.Pointer)
}

// Field is one JSON member of a struct.
type Field struct {
	Name      string // JSON key
	Offset    uintptr
	Kind      Kind
	OmitEmpty bool
	Type      *Type                                  // KStruct, KPtrStruct, KStructs
	Decode    func(d *Decoder, field unsafe.Pointer) // KCustom
}

// New is Type.New for T.
func New[T any]() unsafe.Pointer { return unsafe.Pointer(new(T)) }

// MapMake is Type.MapMake for T.
func MapMake[T any](m unsafe.Pointer) {
	if mp := (*map[string]T)(m); *mp == nil {
		*mp = map[string]T{}
	}
}

// MapNil is Type.MapNil for T.
func MapNil[T any](m unsafe.Pointer) { *(*map[string]T)(m) = nil }

// MapPut is Type.MapPut for T.
func MapPut[T any](m unsafe.Pointer, key string, v unsafe.Pointer) {
	(*(*map[string]T)(m))[key] = *(*T)(v)
}

// Grow is Type.Grow for T.
func Grow[T any](p unsafe.Pointer) {
	s := (*[]T)(p)
	var zero T
	*s = append(*s, zero)
}

// sliceHeader is the layout of every Go slice.
type sliceHeader struct {
	data     unsafe.Pointer
	len, cap int
}

// DecodeStruct decodes an object into the struct of type t at p.
func (d *Decoder) DecodeStruct(t *Type, p unsafe.Pointer) {
	d.Object(t.Name, func(key []byte) bool {
		f := t.field(key)
		if f == nil {
			return false
		}
		d.decodeField(f, unsafe.Add(p, f.Offset))
		return true
	})
}

func (t *Type) field(key []byte) *Field {
	for i := range t.Fields {
		if string(key) == t.Fields[i].Name {
			return &t.Fields[i]
		}
	}
	for i := range t.Fields {
		if Key(key, t.Fields[i].Name) {
			return &t.Fields[i]
		}
	}
	return nil
}

func (d *Decoder) decodeField(f *Field, p unsafe.Pointer) {
	switch f.Kind {
	case KString:
		d.String((*string)(p), "string")
	case KBool:
		d.Bool((*bool)(p))
	case KInt:
		n := int64(*(*int)(p))
		d.Int(&n, 64, "int")
		*(*int)(p) = int(n)
	case KInt64:
		d.Int((*int64)(p), 64, "int64")
	case KUint32:
		n := uint64(*(*uint32)(p))
		d.Uint(&n, 32, "uint32")
		*(*uint32)(p) = uint32(n)
	case KUint64:
		d.Uint((*uint64)(p), 64, "uint64")
	case KFloat64:
		d.Float64((*float64)(p))
	case KStruct:
		d.DecodeStruct(f.Type, p)
	case KPtrStruct:
		pp := (*unsafe.Pointer)(p)
		if d.Null() {
			*pp = nil
			return
		}
		if *pp == nil {
			*pp = f.Type.New()
		}
		d.DecodeStruct(f.Type, *pp)
	case KPtrFloat64:
		pp := (**float64)(p)
		if d.Null() {
			*pp = nil
			return
		}
		if *pp == nil {
			*pp = new(float64)
		}
		d.Float64(*pp)
	case KStrings:
		d.Strings((*[]string)(p))
	case KStructs:
		d.structs(f.Type, p)
	case KStringMap:
		d.StringMap((*map[string]string)(p))
	case KStructMap:
		d.structMap(f.Type, p)
	case KRaw:
		if raw := d.Raw(); raw != nil {
			b := (*[]byte)(p)
			*b = append((*b)[:0], raw...)
		}
	case KCustom:
		f.Decode(d, p)
	}
}

// structMap decodes an object into the map[string]S at p with
// encoding/json's semantics: null is a nil map; an existing map is added
// to; each member is decoded into a fresh zero S (a repeated key replaces
// the earlier value; a null member stores the zero S).
func (d *Decoder) structMap(t *Type, p unsafe.Pointer) {
	if d.err != nil {
		return
	}
	if d.Null() {
		t.MapNil(p)
		return
	}
	what := "map[string]" + t.Name
	if d.peek() != '{' {
		d.mismatch(what)
		return
	}
	t.MapMake(p)
	d.Object(what, func(key []byte) bool {
		k := string(key)
		v := t.New()
		d.DecodeStruct(t, v)
		if d.err == nil {
			t.MapPut(p, k, v)
		}
		return true
	})
}

// structs decodes an array into the slice of structs at p with
// encoding/json's semantics: null is a nil slice; elements already in
// the slice (a repeated key) are decoded into, not replaced; the slice
// is extended within its capacity, then truncated; an empty array is an
// empty, non-nil slice.
func (d *Decoder) structs(t *Type, p unsafe.Pointer) {
	if d.err != nil {
		return
	}
	if d.Null() {
		*(*sliceHeader)(p) = sliceHeader{}
		return
	}
	h := (*sliceHeader)(p)
	n := d.Array("[]"+t.Name, func(i int) {
		if i >= h.len {
			if i < h.cap {
				h.len = i + 1
			} else {
				t.Grow(p)
			}
		}
		d.DecodeStruct(t, unsafe.Add(h.data, uintptr(i)*t.Size))
	})
	if d.err != nil {
		return
	}
	if n < h.len {
		h.len = n
	}
	if n == 0 {
		// An empty array is a new empty slice, not nil and not the old
		// backing array.
		*h = sliceHeader{}
		t.Grow(p)
		h.len = 0
	}
}

// EncodeStruct writes the struct of type t at p.
func (e *Encoder) EncodeStruct(t *Type, p unsafe.Pointer) {
	e.BeginObject()
	for i := range t.Fields {
		f := &t.Fields[i]
		fp := unsafe.Add(p, f.Offset)
		if f.OmitEmpty && empty(f.Kind, fp) {
			continue
		}
		e.Key(f.Name)
		e.encodeField(f, fp)
	}
	e.EndObject()
}

// empty is omitempty's test; structs are never empty.
func empty(k Kind, p unsafe.Pointer) bool {
	switch k {
	case KString, KCustom:
		return *(*string)(p) == ""
	case KBool:
		return !*(*bool)(p)
	case KInt:
		return *(*int)(p) == 0
	case KInt64:
		return *(*int64)(p) == 0
	case KUint32:
		return *(*uint32)(p) == 0
	case KUint64:
		return *(*uint64)(p) == 0
	case KFloat64:
		return *(*float64)(p) == 0
	case KPtrStruct, KPtrFloat64:
		return *(*unsafe.Pointer)(p) == nil
	case KStrings, KStructs, KRaw:
		return (*sliceHeader)(p).len == 0
	case KStringMap:
		return len(*(*map[string]string)(p)) == 0
	}
	return false
}

func (e *Encoder) encodeField(f *Field, p unsafe.Pointer) {
	switch f.Kind {
	case KString, KCustom:
		e.String(*(*string)(p))
	case KBool:
		e.Bool(*(*bool)(p))
	case KInt:
		e.Int(int64(*(*int)(p)))
	case KInt64:
		e.Int(*(*int64)(p))
	case KUint32:
		e.Uint(uint64(*(*uint32)(p)))
	case KUint64:
		e.Uint(*(*uint64)(p))
	case KFloat64:
		e.Float64(*(*float64)(p))
	case KStruct:
		e.EncodeStruct(f.Type, p)
	case KPtrStruct:
		if pp := *(*unsafe.Pointer)(p); pp != nil {
			e.EncodeStruct(f.Type, pp)
		} else {
			e.Null()
		}
	case KPtrFloat64:
		if pp := *(**float64)(p); pp != nil {
			e.Float64(*pp)
		} else {
			e.Null()
		}
	case KStrings:
		e.Strings(*(*[]string)(p))
	case KStructs:
		h := (*sliceHeader)(p)
		if h.data == nil {
			e.Null()
			return
		}
		e.BeginArray()
		for i := 0; i < h.len; i++ {
			e.EncodeStruct(f.Type, unsafe.Add(h.data, uintptr(i)*f.Type.Size))
		}
		e.EndArray()
	case KStringMap:
		e.StringMap(*(*map[string]string)(p))
	case KRaw:
		panic("strictjson: encoding raw JSON is not supported")
	case KStructMap:
		panic("strictjson: encoding a map of structs is not supported")
	}
}
