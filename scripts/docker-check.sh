#!/usr/bin/env bash
# scripts/docker-check.sh: run the Dockerfile's build stage commands outside
# Docker (this machine has no Docker engine) and check the result is what
# the final distroless image needs: a static, stripped binary for each
# target platform that starts and reports its version.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# The module layer: go mod download with only the files the Dockerfile
# copies before it (go.mod's replace needs third_party/mochi-mqtt/go.mod).
mkdir -p "$out/mod/third_party/mochi-mqtt"
cp go.mod go.sum "$out/mod/"
cp third_party/mochi-mqtt/go.mod third_party/mochi-mqtt/go.sum "$out/mod/third_party/mochi-mqtt/"
(cd "$out/mod" && go mod download)
for platform in linux/amd64 linux/arm64 linux/arm/v7; do
	IFS=/ read -r TARGETOS TARGETARCH TARGETVARIANT <<<"$platform"
	TARGETVARIANT=${TARGETVARIANT:-}
	GOARM="${TARGETVARIANT#v}" CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
		go build -trimpath -ldflags "-s -w -X main.version=docker-check" -o "$out/iotgw-$TARGETARCH" ./cmd/iotgw
	info=$(file "$out/iotgw-$TARGETARCH" 2>/dev/null || true)
	if [[ -n $info && $info != *"statically linked"* ]]; then
		echo "docker-check: $platform binary is not static: $info" >&2
		exit 1
	fi
	printf 'docker-check: %-13s %s MiB\n' "$platform" "$(( $(stat -c %s "$out/iotgw-$TARGETARCH") / 1048576 ))"
done
"$out/iotgw-amd64" version | grep -q docker-check
# The config the image ships must be valid (brokers and buffer from the example).
"$out/iotgw-amd64" check-config examples/iotgw.yaml >/dev/null
grep -q '^USER 65532' Dockerfile || { echo "docker-check: image must not run as root" >&2; exit 1; }
echo "docker-check: ok"
