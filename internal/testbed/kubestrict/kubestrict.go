// Package kubestrict decodes Kubernetes and Istio manifests strictly into
// their Go types: an unknown or duplicate field anywhere is an error. It is
// what meshguard's tests use to prove that the manifests it ships and
// generates mean what they say.
//
// Kubernetes kinds go through client-go's scheme with strict decoding.
// Istio kinds need more, because Istio's generated JSON decoders accept
// unknown fields: their spec is decoded again with protojson, which does not.
package kubestrict

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	istioscheme "istio.io/client-go/pkg/clientset/versioned/scheme"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	kubescheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"
)

// Decoder decodes manifests of the kinds its scheme knows.
type Decoder struct {
	scheme *runtime.Scheme
	codecs serializer.CodecFactory
}

// New returns a Decoder for Kubernetes' built-in kinds, CRDs, Istio's kinds
// and whatever add registers (for example a ServiceMonitor's scheme).
func New(add ...func(*runtime.Scheme) error) (*Decoder, error) {
	s := runtime.NewScheme()
	for _, f := range append([]func(*runtime.Scheme) error{kubescheme.AddToScheme, apiextensionsv1.AddToScheme, istioscheme.AddToScheme}, add...) {
		if err := f(s); err != nil {
			return nil, fmt.Errorf("kubestrict: scheme: %w", err)
		}
	}
	return &Decoder{scheme: s, codecs: serializer.NewCodecFactory(s, serializer.EnableStrict)}, nil
}

// Documents splits a YAML stream into its non-empty documents.
func Documents(data []byte) ([][]byte, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var out [][]byte
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("kubestrict: split: %w", err)
		}
		if len(bytes.TrimSpace(stripComments(doc))) == 0 {
			continue
		}
		out = append(out, doc)
	}
}

func stripComments(doc []byte) []byte {
	var b bytes.Buffer
	for _, line := range strings.Split(string(doc), "\n") {
		if t := strings.TrimSpace(line); t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		b.WriteString(line)
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// Decode decodes one YAML or JSON document strictly into its typed object.
func (d *Decoder) Decode(doc []byte) (runtime.Object, *schema.GroupVersionKind, error) {
	js, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return nil, nil, fmt.Errorf("kubestrict: %w", err)
	}
	o, gvk, err := d.codecs.UniversalDeserializer().Decode(js, nil, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("kubestrict: %w", err)
	}
	if strings.HasSuffix(gvk.Group, ".istio.io") {
		if err := strictIstioSpec(js, o); err != nil {
			return nil, gvk, fmt.Errorf("kubestrict: %s %s: %w", gvk.Kind, nameOf(js), err)
		}
	}
	return o, gvk, nil
}

// strictIstioSpec decodes the document's spec again with protojson, which
// rejects unknown fields, and checks it equals what the scheme decoded.
func strictIstioSpec(js []byte, obj runtime.Object) error {
	var envelope struct {
		Spec json.RawMessage `json:"spec"`
	}
	if err := json.Unmarshal(js, &envelope); err != nil {
		return err
	}
	specHolder, ok := specOf(obj)
	if !ok {
		return fmt.Errorf("%T has no protobuf spec", obj)
	}
	if len(envelope.Spec) == 0 {
		return nil
	}
	strict := specHolder.ProtoReflect().New().Interface()
	if err := (protojson.UnmarshalOptions{}).Unmarshal(envelope.Spec, strict); err != nil {
		return fmt.Errorf("spec: %w", err)
	}
	if !proto.Equal(strict, specHolder) {
		return errors.New("spec: decoders disagree")
	}
	return nil
}

// specOf returns a pointer to the object's Spec field when it is a protobuf
// message, as every Istio kind's is.
func specOf(obj runtime.Object) (proto.Message, bool) {
	v := reflect.ValueOf(obj)
	if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
		return nil, false
	}
	f := v.Elem().FieldByName("Spec")
	if !f.IsValid() || !f.CanAddr() {
		return nil, false
	}
	m, ok := f.Addr().Interface().(proto.Message)
	return m, ok
}

func nameOf(js []byte) string {
	var m struct {
		Metadata struct {
			Namespace string `json:"namespace"`
			Name      string `json:"name"`
		} `json:"metadata"`
	}
	_ = json.Unmarshal(js, &m)
	if m.Metadata.Namespace == "" {
		return m.Metadata.Name
	}
	return m.Metadata.Namespace + "/" + m.Metadata.Name
}
