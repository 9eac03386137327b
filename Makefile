# iotgw: `make test` is the one test command (CI runs it through .ci/run).
GO ?= go
BIN := bin/iotgw
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)

.PHONY: all build test test-faults soak deps kafka-up kafka-down redis-up redis-down bench bench-buffer fuzz clean build-arm

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/iotgw

build-arm:
	CGO_ENABLED=0 GOOS=linux GOARCH=arm64 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/iotgw-linux-arm64 ./cmd/iotgw
	CGO_ENABLED=0 GOOS=linux GOARCH=arm GOARM=7 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/iotgw-linux-armv7 ./cmd/iotgw

# deps + services + every test + teardown; non-zero on any failure.
test:
	scripts/test.sh

# The fault suite alone (make test runs it too): SIGKILLs under load, a
# corrupt buffer tail, Kafka outages and hangs (TestKafkaOwnBroker), Redis
# killed, a full disk, a broker of three killed; see docs/reliability.md.
test-faults:
	scripts/test.sh -run 'Fault|SIGKILL|Corrupt|KafkaOwnBroker|RedisKilled|DiskFull|Soak'

# The mixed-fault soak (make test runs it for 90 s) for SOAK (default 15m),
# the faults in a random order; SOAK_SEED repeats an order it printed.
SOAK ?= 15m
soak:
	IOTGW_SOAK=$(SOAK) IOTGW_SOAK_SEED=$(SOAK_SEED) scripts/test.sh -run TestSoakMixedFaults -v -timeout 3h

deps:
	scripts/deps.sh

kafka-up:
	scripts/kafka.sh up

kafka-down:
	scripts/kafka.sh down

redis-up:
	scripts/redis.sh up

redis-down:
	scripts/redis.sh down

# Benchmarks print ratios measured side by side in one run.
bench:
	scripts/bench.sh

bench-buffer:
	$(GO) run ./bench/buffer

bench-coap:
	$(GO) run ./bench/coap

bench-mqtt:
	$(GO) run ./bench/mqtt

# A short coverage-guided run of every fuzz target.
fuzz:
	scripts/fuzz.sh

clean:
	rm -rf bin
