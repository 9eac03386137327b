#!/usr/bin/env bash
# scripts/fuzz.sh [SECONDS]: a short coverage-guided run of every fuzz target
# (go test -fuzz), FUZZTIME seconds each (default 10). `make test` already
# runs every target's seed corpus as a unit test; this explores beyond it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
t=${1:-${FUZZTIME:-10}}
fail=0
while IFS= read -r line; do
	file=${line%%:*}
	name=$(sed -E 's/^func (Fuzz[A-Za-z0-9_]+).*/\1/' <<<"${line#*:}")
	pkg=./$(dirname "$file")
	tags=""
	grep -q '^//go:build integration' "$file" && tags="-tags integration"
	echo "== $pkg $name (${t}s)"
	# shellcheck disable=SC2086
	if ! go test $tags -run '^$' -fuzz "^${name}\$" -fuzztime "${t}s" "$pkg" >/tmp/iotgw-fuzz.log 2>&1; then
		cat /tmp/iotgw-fuzz.log
		fail=1
	fi
done < <(grep -rn --include='*_test.go' -E '^func Fuzz[A-Za-z0-9_]+\(' . | grep -v '/.cache/')
exit $fail
