# proxy-hopper — see README.md
export PATH := $(PATH):/usr/local/go/bin
GO      ?= go
BIN     ?= bin/proxy-hopper
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
FUZZTIME ?= 0
CLANG   ?= clang-19
BPF_CFLAGS ?= -O2 -g -Wall -Werror

.PHONY: all build test demo bench soak lint fuzz deps clean generate

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/proxy-hopper

deps:
	./scripts/deps.sh

lint:
	@out=$$(gofmt -l $$(git ls-files -co --exclude-standard '*.go' | grep -v '_bpfe[lb].go$$')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# Runs every test, including the fuzz seed corpora (plain `go test` runs
# them); FUZZTIME=30s also fuzzes each target for that long. The tests run
# in a private network namespace with only loopback up (scripts/isolated.sh):
# nothing they start can send a packet off this machine, and
# TestNetworkIsolated fails if that ever stops being true.
test: deps lint
	$(MAKE) --no-print-directory generate
	git diff --exit-code -- bpf/
	PH_REQUIRE_ISOLATION=1 ./scripts/isolated.sh $(GO) test -race -count=1 -timeout 15m ./...
	@if [ "$(FUZZTIME)" != "0" ]; then ./scripts/isolated.sh ./scripts/fuzz.sh $(FUZZTIME); fi

# Regenerates the committed bpf2go output (bpf/*_bpfel.{go,o}) from bpf/*.c.
generate:
	cd bpf && BPF_CLANG=$(CLANG) BPF_CFLAGS="$(BPF_CFLAGS)" $(GO) generate ./

fuzz:
	./scripts/isolated.sh ./scripts/fuzz.sh $(or $(FUZZTIME:0=),30s)

demo:
	$(GO) run ./cmd/proxy-hopper demo

bench: deps
	./scripts/bench.sh

# Hostile clients and upstreams against a running agent while good clients
# use it (scripts/soak; isolated from the network like the tests).
soak: build
	$(GO) run ./scripts/soak -bin $(BIN) $(SOAK_ARGS)

clean:
	rm -rf bin
