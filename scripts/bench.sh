#!/usr/bin/env bash
# scripts/bench.sh: everything `make bench` does. Starts what the benchmarks
# need (Kafka, Redis; each benchmark starts its own gateway, brokers and
# peers), runs every scenario side by side, and writes docs/benchmarks.md
# with a table per scenario, the command that reproduces it, and a chart of
# the ratios against their targets (docs/benchmarks.svg, matplotlib).
#
# BENCH_ONLY=buffer,mqtt,... runs a subset. The machine is shared and noisy:
# the figures that matter are the ratios, measured side by side in one run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
CACHE=${IOTGW_CACHE:-$root/.cache}
only=${BENCH_ONLY:-}

scripts/deps.sh
go mod download

# Telegraf for the reference pipeline, built from the Go module proxy into the
# git-ignored cache (its code and binary are never committed).
# The custom build needs its data formats too: the value parser (payload as
# a string field) and the JSON serializer (what lands in Kafka).
telegraf_tags="custom,inputs.mqtt_consumer,outputs.kafka,parsers.value,serializers.json"
if [[ ! -x $CACHE/tools/telegraf || "$(cat "$CACHE/tools/telegraf.tags" 2>/dev/null)" != "$telegraf_tags" ]]; then
	echo "building Telegraf v1.37.2 ($telegraf_tags) into $CACHE/tools ..."
	GOBIN=$CACHE/tools GOFLAGS=-mod=mod go install -tags "$telegraf_tags" \
		github.com/influxdata/telegraf/cmd/telegraf@v1.37.2
	echo "$telegraf_tags" >"$CACHE/tools/telegraf.tags"
fi

# The broker's log goes on a tmpfs when there is room (KAFKA_DATA_ROOT,
# see scripts/kafka.sh): in a deployment Kafka runs on other hosts, and on
# this one machine its segment flushes and writeback would stall the
# gateway buffer's fsyncs on the shared disk. The gateway's buffer stays on
# the disk. `KAFKA_DATA_ROOT= make bench` keeps the broker's log on disk.
bench_tmpfs_gib=12
if [[ -z ${KAFKA_DATA_ROOT+set} && -d /dev/shm ]] &&
	(($(df -k --output=avail /dev/shm | tail -1) > bench_tmpfs_gib * 1024 * 1024)); then
	export KAFKA_DATA_ROOT=/dev/shm/iotgw-bench-kafka
fi

started=()
teardown() {
	local rc=$?
	for s in "${started[@]}"; do "scripts/$s.sh" down >/dev/null 2>&1 || true; done
	exit $rc
}
trap teardown EXIT
if [[ -z ${IOTGW_TEST_KAFKA:-} ]] && ! scripts/kafka.sh status >/dev/null 2>&1; then
	started+=(kafka)
	echo "starting Kafka with its log in ${KAFKA_DATA_ROOT:-its run dir, on disk}" >&2
	scripts/kafka.sh up
fi
if [[ -z ${IOTGW_TEST_REDIS:-} ]] && ! scripts/redis.sh status >/dev/null 2>&1; then
	started+=(redis)
	scripts/redis.sh up
fi

out=$(mktemp -d)
sections=()
bench() { # name command...
	local name=$1
	shift
	if [[ -n $only && ,$only, != *,$name,* ]]; then return; fi
	echo "== bench $name: $*" >&2
	if "$@" >"$out/$name.md" 2>"$out/$name.log"; then
		sections+=("$name")
	else
		echo "bench $name failed; log:" >&2
		tail -20 "$out/$name.log" >&2
		printf '## %s\n\nFAILED in this run: `%s` (see its log).\n' "$name" "$*" >"$out/$name.md"
		sections+=("$name")
	fi
}

bench buffer go run ./bench/buffer
bench mqtt go run ./bench/mqtt
bench coap go run ./bench/coap
bench egress go run ./bench/egress
bench enrich go run ./bench/enrich
bench footprint go run ./bench/footprint
bench reference go run ./bench/reference -telegraf "$CACHE/tools/telegraf"

grep -h '^RESULT ' "$out"/*.md >"$out/results.txt" || true

# The chart: each ratio against its target, with matplotlib in a venv under
# the cache (PyPI), so the repository carries no plotting code of its own.
if [[ ! -x $CACHE/venv/bin/python ]]; then
	python3 -m venv "$CACHE/venv"
	"$CACHE/venv/bin/pip" install -q matplotlib
fi
"$CACHE/venv/bin/python" scripts/bench_chart.py "$out/results.txt" docs/benchmarks.svg || echo "chart not drawn" >&2

{
	echo "# Benchmarks"
	echo
	echo "Measured by \`make bench\` on $(date -u +%Y-%m-%d) on this project's build machine ($(nproc) cores, shared and noisy)."
	echo "Absolute figures drift from run to run; the ratios are measured side by side in one run."
	echo "Each section names the command that reproduces it."
	echo
	echo "![ratios against targets](benchmarks.svg)"
	echo
	for s in "${sections[@]}"; do
		grep -v '^RESULT ' "$out/$s.md"
		echo
	done
} >docs/benchmarks.md
echo "wrote docs/benchmarks.md and docs/benchmarks.svg" >&2
rm -rf "$out"
