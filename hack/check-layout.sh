#!/usr/bin/env bash
# Keeps the repository's floors apart and its history free of build outputs:
#
#  * leaf helpers under internal/ (everything but internal/testbed) import no
#    component: nothing under authz/, wasm/, controlplane/ or internal/testbed/;
#  * no component (policies/, authz/, wasm/, controlplane/) imports a harness
#    from internal/testbed/ outside its tests;
#  * no tracked file is an executable or object file (ELF, Mach-O, PE, wasm).
set -euo pipefail
cd "$(dirname "$0")/.."
mod=$(go list -m)
fail=0

helpers=$(go list ./internal/... | grep -v "^$mod/internal/testbed/" || true)
for pkg in $helpers; do
	bad=$(go list -deps "$pkg" | grep -E "^$mod/(authz|wasm|controlplane|internal/testbed)(/|$)" || true)
	if [ -n "$bad" ]; then
		echo "layout: helper $pkg imports components or harnesses:"; sed 's/^/  /' <<<"$bad"; fail=1
	fi
done

for pkg in $(go list ./policies/... ./authz/... ./controlplane/... ./wasm/...); do
	bad=$(go list -deps "$pkg" | grep -E "^$mod/internal/testbed(/|$)" || true)
	if [ -n "$bad" ]; then
		echo "layout: component $pkg imports a harness:"; sed 's/^/  /' <<<"$bad"; fail=1
	fi
done
# The filter's packages only build for wasip1; check them there too.
for pkg in $(GOOS=wasip1 GOARCH=wasm go list ./wasm/filter/... ./wasm/internal/...); do
	bad=$(GOOS=wasip1 GOARCH=wasm go list -deps "$pkg" | grep -E "^$mod/internal/testbed(/|$)" || true)
	if [ -n "$bad" ]; then
		echo "layout: component $pkg imports a harness:"; sed 's/^/  /' <<<"$bad"; fail=1
	fi
done

while IFS= read -r -d '' f; do
	[ -f "$f" ] || continue
	magic=$(head -c 4 "$f" | od -An -tx1 | tr -d ' \n')
	case "$magic" in
	7f454c46 | cffaedfe | cefaedfe | feedface | feedfacf | 0061736d | 4d5a*)
		echo "layout: build output tracked in git: $f (magic $magic)"; fail=1 ;;
	esac
done < <(git ls-files -z)

exit $fail
