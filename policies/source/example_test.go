package source_test

import (
	"fmt"

	"github.com/meshguard/meshguard/policies/source"
)

func ExampleParse() {
	set, diags := source.Parse("policy.yaml", []byte(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: catalog
  namespace: bookstore
spec:
  rules:
  - from:
    - source:
        principal: ["cluster.local/ns/bookstore/sa/frontend"]
    to:
    - operation:
        ports: [8080]
`))
	for _, d := range diags {
		fmt.Println(d)
	}
	fmt.Println(len(set.AuthorizationPolicies), "policies")
	// Output:
	// policy.yaml:10:9: error[unknown_field]: AuthorizationPolicy/bookstore/catalog spec.rules[0].from[0].source.principal: unknown field "principal"; did you mean "principals"?
	// policy.yaml:13:17: error[wrong_type]: AuthorizationPolicy/bookstore/catalog spec.rules[0].to[0].operation.ports[0]: expected a string, got the integer 8080 (quote it: "8080")
	// 0 policies
}
