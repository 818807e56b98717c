# Custos. `make test` runs every test; `make bench` prints the benchmark tables.
GO      ?= go
# Fuzzing runs for a number of executions, not a duration: with a duration,
# Go 1.26's coordinator can report the deadline itself as a failure
# (go.dev/issue/75804, fixed in Go 1.27). 400,000 is 10–30 s a target here.
FUZZTIME ?= 400000x

export PATH := $(PATH):/usr/local/go/bin
# bash, for pipefail: a recipe that pipes go test into grep must fail
# when the tests do, not succeed with grep.
SHELL := /bin/bash

.PHONY: run demo test unit fuzz bench bench-replicas bench-micro ct vet build

# hsm's one-call derive is compiled against p11-kit's PKCS#11 header
# (Debian's libp11-kit-dev), installed here when missing, as softhsm/
# installs SoftHSM2.
P11_HEADER := /usr/include/p11-kit-1/p11-kit/pkcs11.h
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
$(P11_HEADER):
	@echo "installing libp11-kit-dev, the PKCS#11 header the hsm package is compiled against" >&2
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq libp11-kit-dev

build vet unit fuzz ct bench-micro: $(P11_HEADER)

build:
	$(GO) build -o bin/ ./cmd/...

# Serve on 127.0.0.1:8443 with a SoftHSM2 token under ./var (created, with
# SoftHSM2 installed, if missing) and the SQLite registry ./var/custos.db.
run: build
	eval "$$(softhsm/dev-env.sh var)" && bin/custosd init && exec bin/custosd serve

# Walk through a client's life against `make run` (or a service it starts).
demo: build
	bash tests/demo.sh

vet:
	$(GO) vet ./...

# Every test, with the race detector, then each fuzz target briefly.
test: vet unit fuzz

unit:
	$(GO) test -race -count=1 ./...
	# Tests that measure latency under load, again without the race
	# detector, whose scheduling they would otherwise measure.
	$(GO) test -count=1 -run 'Flood|UnderLoad' ./tests

fuzz:
	$(GO) test ./exchange -run '^$$' -fuzz '^FuzzDecodeRequest$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 2000x
	$(GO) test ./exchange -run '^$$' -fuzz '^FuzzClientFinish$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 2000x
	$(GO) test ./exchange -run '^$$' -fuzz '^FuzzOpenTicket$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 2000x
	$(GO) test ./internal/ticket -run '^$$' -fuzz '^FuzzSessionUnmarshal$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 2000x
	$(GO) test ./internal/jwc -run '^$$' -fuzz '^FuzzRequestToken$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 2000x
	$(GO) test ./internal/jwc -run '^$$' -fuzz '^FuzzDecodeFlat$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 2000x
	$(GO) test ./internal/wire -run '^$$' -fuzz '^FuzzSplitObject$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 2000x
	$(GO) test ./internal/wire -run '^$$' -fuzz '^FuzzMarshalMatchesEncodingJSON$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 2000x

# One table from one run: primitives, the server-cost bound, CPU per
# exchange (both profiles), throughput and p99 against a local custosd
# beside an mTLS server whose key is in the same token (ECDSA and RSA),
# authenticated vs plain requests, token operations, memory per session,
# openssl speed; and docs/bench.svg, throughput and p99 against concurrency.
# (`make bench-micro` runs the go test benchmarks behind the primitives.)
bench: build
	$(GO) run ./tests/benchtable -bin bin

# Scale-out: authenticated requests/s and exchanges/s through haproxy with
# 1, 2 and 3 replicas (one SoftHSM token, one PostgreSQL registry), replays
# and limits in memory and in Redis, beside one replica served directly
# (needs redis-server, haproxy and PostgreSQL, which .ci/run installs).
bench-replicas: build
	$(GO) run ./tests/benchreplicas -bin bin

# Constant-time evidence (internal/dudect): fixed-vs-random secrets through
# B^r, the client's (n + d·c) exponentiation, g^r, the P-256 r·G, DH(r, ·)
# and the client's three DH values, the witness check and MAC
# verification, |t| < 4.5 to pass; and math/big's Exp as a control that
# must be caught.
ct:
	set -o pipefail; $(GO) test -tags ct -count=1 -run 'ConstantTime' -v ./exchange/... ./internal/... | grep -E '^(=== RUN|--- |\s+ct_test|ok|FAIL|PASS)'

bench-micro:
	$(GO) test -run '^$$' -bench . -benchmem ./exchange/... ./internal/...
	$(GO) test -run '^$$' -bench . ./keystore/p11 ./tests
