#!/usr/bin/env bash
# Runs every Fuzz* target of the module for the given time each (default 10s).
set -euo pipefail
fuzztime=${1:-10s}
cd "$(dirname "$0")/.."
status=0
while IFS= read -r line; do
	file=${line%%:*}
	name=$(sed -E 's/^func (Fuzz[A-Za-z0-9_]*)\(.*/\1/' <<<"${line#*:}")
	pkg=./$(dirname "$file")
	echo "== fuzz $pkg $name ($fuzztime)"
	if ! go test -run '^$' -fuzz "^${name}\$" -fuzztime "$fuzztime" "$pkg"; then
		status=1
	fi
done < <(git ls-files -co --exclude-standard '*_test.go' | xargs grep -H -E '^func Fuzz[A-Za-z0-9_]*\(' | sort)
exit $status
