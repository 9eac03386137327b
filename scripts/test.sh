#!/usr/bin/env bash
# scripts/test.sh: everything `make test` does. Installs what is missing,
# starts the Kafka and Redis the tests need (unless they already run, or
# IOTGW_TEST_KAFKA / IOTGW_TEST_REDIS point elsewhere), runs every test
# (unit, integration, end to end, fuzz seeds), checks the arm64 build, and
# stops what it started. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
start=$(date +%s)

scripts/deps.sh
go mod download

started=()
teardown() {
	local rc=$?
	for s in "${started[@]}"; do
		"scripts/$s.sh" down >/dev/null 2>&1 || echo "warning: $s down failed" >&2
	done
	echo "make test: $(( $(date +%s) - start ))s wall time, exit $rc"
	exit $rc
}
trap teardown EXIT

if [[ -z ${IOTGW_TEST_KAFKA:-} ]] && ! scripts/kafka.sh status >/dev/null 2>&1; then
	started+=(kafka)
	scripts/kafka.sh up
fi
if [[ -z ${IOTGW_TEST_REDIS:-} ]] && ! scripts/redis.sh status >/dev/null 2>&1; then
	started+=(redis)
	scripts/redis.sh up
fi

echo "== vet and builds"
go vet -tags integration ./...
# The Dockerfile's build commands, outside Docker: static binaries for
# linux/amd64, linux/arm64 and linux/arm/v7.
scripts/docker-check.sh

# iotgw's copy of mochi-mqtt is a module of its own, which ./... leaves
# out: its patches must make it, and mochi's tests (with the ones the
# patches add) must pass.
if [[ $# -eq 0 ]]; then
	echo "== third_party/mochi-mqtt"
	scripts/mochi-diff.sh check
	(cd third_party/mochi-mqtt && go vet ./... && go test -count=1 ./...)
fi

echo "== tests (unit, integration, end to end)"
# -p 2: the machine has 2 cores and the tests share one Kafka.
# Extra arguments (e.g. -run PATTERN) narrow the run: make test-faults.
go test -tags integration -count=1 -p 2 -timeout 25m "$@" ./...
