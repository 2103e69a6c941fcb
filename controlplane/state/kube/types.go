package kube

import (
	"reflect"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/meshguard/meshguard/controlplane/state"
	"github.com/meshguard/meshguard/internal/crdgen"
)

// GroupVersion of the state kinds: the same API group as the policy kinds.
var GroupVersion = schema.GroupVersion{Group: crdgen.Group, Version: crdgen.Version}

// Resources (plural names) of the state kinds.
const (
	ResourceQuarantines = "quarantinerecords"
	ResourceBaselines   = "learnedbaselines"
)

// Kinds are the CustomResourceDefinitions of the control plane's state, next
// to the policy kinds of crdgen.Kinds. The control plane writes them; users
// read them (kubectl get quarantinerecords,learnedbaselines -n <namespace>).
var Kinds = []crdgen.Kind{
	{
		Kind: "QuarantineRecord", Plural: ResourceQuarantines, ShortNames: []string{"mgqr"},
		Doc:  "The control plane's record of one identity's quarantine: phase, reason, who or what added it, evidence, expiry, release and the history of every change, and the reports about the identity it is correlating (phase Observed when it was never quarantined: nothing is enforced). Written by meshguard controlplane; quarantines to enforce are written as Quarantine policies or through `meshguard quarantine add`.",
		Spec: reflect.TypeFor[state.Quarantine](),
		Columns: []apiextensionsv1.CustomResourceColumnDefinition{
			crdgen.Column("Identity", ".spec.identity"), crdgen.Column("Phase", ".spec.phase"),
			crdgen.Column("Expires", ".spec.expiresAt"), crdgen.Column("By", ".spec.by"),
		},
		Enums: map[string][]string{"Quarantine.Phase": {string(state.PhaseActive), string(state.PhaseReleased), string(state.PhaseExpired), string(state.PhaseObserved)}},
	},
	{
		Kind: "LearnedBaseline", Plural: ResourceBaselines, ShortNames: []string{"mglb"},
		Doc:     "The callers the control plane has seen reach one destination service, with their routes and methods; `meshguard baseline export` drafts least-privilege policies from them. Written by meshguard controlplane.",
		Spec:    reflect.TypeFor[state.Baseline](),
		Columns: []apiextensionsv1.CustomResourceColumnDefinition{crdgen.Column("Destination", ".spec.destination")},
	},
}

// QuarantineRecord is the custom resource holding a state.Quarantine.
type QuarantineRecord struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              state.Quarantine `json:"spec"`
}

// QuarantineRecordList is a list of QuarantineRecords.
type QuarantineRecordList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []QuarantineRecord `json:"items"`
}

// LearnedBaseline is the custom resource holding a state.Baseline.
type LearnedBaseline struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              state.Baseline `json:"spec"`
}

// LearnedBaselineList is a list of LearnedBaselines.
type LearnedBaselineList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []LearnedBaseline `json:"items"`
}

// DeepCopyObject implements runtime.Object.
func (in *QuarantineRecord) DeepCopyObject() runtime.Object {
	if in == nil {
		return nil
	}
	out := &QuarantineRecord{TypeMeta: in.TypeMeta, Spec: *in.Spec.Clone()}
	in.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	return out
}

// DeepCopyObject implements runtime.Object.
func (in *QuarantineRecordList) DeepCopyObject() runtime.Object {
	if in == nil {
		return nil
	}
	out := &QuarantineRecordList{TypeMeta: in.TypeMeta}
	in.ListMeta.DeepCopyInto(&out.ListMeta)
	if in.Items != nil {
		out.Items = make([]QuarantineRecord, len(in.Items))
		for i := range in.Items {
			out.Items[i] = *in.Items[i].DeepCopyObject().(*QuarantineRecord)
		}
	}
	return out
}

// DeepCopyObject implements runtime.Object.
func (in *LearnedBaseline) DeepCopyObject() runtime.Object {
	if in == nil {
		return nil
	}
	out := &LearnedBaseline{TypeMeta: in.TypeMeta, Spec: *in.Spec.Clone()}
	in.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	return out
}

// DeepCopyObject implements runtime.Object.
func (in *LearnedBaselineList) DeepCopyObject() runtime.Object {
	if in == nil {
		return nil
	}
	out := &LearnedBaselineList{TypeMeta: in.TypeMeta}
	in.ListMeta.DeepCopyInto(&out.ListMeta)
	if in.Items != nil {
		out.Items = make([]LearnedBaseline, len(in.Items))
		for i := range in.Items {
			out.Items[i] = *in.Items[i].DeepCopyObject().(*LearnedBaseline)
		}
	}
	return out
}

// newScheme registers the state kinds and the meta types their API calls
// use (list and delete options).
func newScheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	s.AddKnownTypes(GroupVersion, &QuarantineRecord{}, &QuarantineRecordList{}, &LearnedBaseline{}, &LearnedBaselineList{})
	metav1.AddToGroupVersion(s, GroupVersion)
	return s, nil
}
