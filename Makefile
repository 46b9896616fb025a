# proxy-hopper — see README.md
export PATH := $(PATH):/usr/local/go/bin
GO      ?= go
BIN     ?= bin/proxy-hopper
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
FUZZTIME ?= 0
CLANG   ?= clang-19
BPF_CFLAGS ?= -O2 -g -Wall -Werror

.PHONY: all build test demo bench soak lint fuzz deps clean generate image dist deploy-check

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/proxy-hopper

# Release binaries: static (CGO off; the BPF objects are embedded and
# little-endian, so one build serves amd64 and arm64), with SHA256SUMS.
DIST_ARCHES ?= amd64 arm64
dist:
	rm -rf dist && mkdir -p dist
	for arch in $(DIST_ARCHES); do \
		CGO_ENABLED=0 GOOS=linux GOARCH=$$arch $(GO) build -trimpath -ldflags '$(LDFLAGS) -s -w' \
			-o dist/proxy-hopper-$(VERSION)-linux-$$arch ./cmd/proxy-hopper || exit 1; \
	done
	cd dist && sha256sum proxy-hopper-* > SHA256SUMS

# Container image from scratch (deploy/container/Containerfile), built with
# podman or buildah; nothing is pulled. IMAGE names the tag.
IMAGE   ?= localhost/proxy-hopper:$(subst +,-,$(VERSION))
IMAGE_LATEST ?= localhost/proxy-hopper:latest
BUILDAH ?= $(shell command -v podman || command -v buildah)
image:
	@test -n "$(BUILDAH)" || { echo "image: needs podman or buildah (apt-get install buildah)"; exit 1; }
	rm -rf bin/image && mkdir -p bin/image
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS) -s -w' -o bin/image/proxy-hopper ./cmd/proxy-hopper
	cp /etc/ssl/certs/ca-certificates.crt bin/image/
	printf 'root:x:0:0:root:/:/sbin/nologin\nproxy-hopper:x:65532:65532:proxy-hopper:/:/sbin/nologin\n' > bin/image/passwd
	printf 'root:x:0:\nproxy-hopper:x:65532:\n' > bin/image/group
	$(BUILDAH) build --quiet -f deploy/container/Containerfile \
		--build-arg VERSION=$(VERSION) \
		--build-arg REVISION=$$(git rev-parse HEAD 2>/dev/null || echo unknown) \
		-t $(IMAGE) $(if $(IMAGE_LATEST),-t $(IMAGE_LATEST)) bin/image

# Checks every deployment artefact offline: systemd units (verify, exposure
# scores), the container image, Compose examples, the Helm chart (lint,
# template, strict decoding into the Kubernetes API types) and make dist.
# Part of make test; needs no network once deps ran.
deploy-check:
	./scripts/deploy-check.sh

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
	$(MAKE) --no-print-directory deploy-check
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
	rm -rf bin dist
