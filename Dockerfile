# syntax=docker/dockerfile:1
# iotgw: a static binary on a distroless base, running as a non-root user.
# Multi-arch: docker buildx build --platform linux/amd64,linux/arm64,linux/arm/v7 .
# scripts/docker-check.sh runs the build stage's commands outside Docker.

FROM --platform=$BUILDPLATFORM golang:1.26-bookworm AS build
WORKDIR /src
# Modules first, so source edits do not re-download them. go.mod replaces
# mochi-mqtt with the copy in third_party (see its PATCHES.md), whose go.mod
# go mod download needs.
COPY go.mod go.sum ./
COPY third_party/mochi-mqtt/go.mod third_party/mochi-mqtt/go.sum ./third_party/mochi-mqtt/
RUN go mod download
COPY . .
ARG TARGETOS=linux TARGETARCH=amd64 TARGETVARIANT
ARG VERSION=dev
RUN GOARM="${TARGETVARIANT#v}" CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/iotgw ./cmd/iotgw \
 && mkdir -p /out/data/buffer

# distroless/static: CA certificates and /etc/passwd, no shell, no libc.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/iotgw /iotgw
COPY --from=build --chown=65532:65532 /out/data /var/lib/iotgw
COPY examples/iotgw.yaml /etc/iotgw/iotgw.yaml
USER 65532:65532
ENV IOTGW_BUFFER_DIR=/var/lib/iotgw/buffer
# The buffer must outlive the container: it holds acknowledged messages
# that Kafka does not have yet.
VOLUME ["/var/lib/iotgw"]
# MQTT, MQTT/TLS, MQTT/WebSocket, CoAP, CoAP/DTLS, admin HTTP
EXPOSE 1883 8883 8083 5683/udp 5684/udp 8080
ENTRYPOINT ["/iotgw"]
CMD ["run", "--config", "/etc/iotgw/iotgw.yaml"]
