# agentrunner — the two commands that matter are `make dev` and `make test`.
# Both install and start what they need (idempotently) through `make services`.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

AGENTRUNNER_CACHE ?= $(HOME)/.cache/agentrunner
AGENTRUNNER_RUN   ?= $(AGENTRUNNER_CACHE)/run
export AGENTRUNNER_CACHE AGENTRUNNER_RUN
SERVICES_ENV := $(AGENTRUNNER_RUN)/services.env

GO        ?= go
BIN       := bin/agentrunner
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT    ?= $(shell git rev-parse HEAD 2>/dev/null)
DATE      ?= $(shell date -u +%Y-%m-%dT%H:%M:%SZ)
LDFLAGS   := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT) -X main.date=$(DATE)

# The workflow integration tests that run a second time on the Temporal
# server with SQL persistence (deploy/dev/temporal-server.sh): all but the
# 2,000-update backlog test, which takes ~9 min there on this machine.
SQL_TESTS ?= ^TestIntegration
SQL_SKIP  ?= ^TestIntegrationBacklogOfThousandsBlockedAgent$$

# Fuzz targets: package:FuzzName, each run for FUZZTIME by `make fuzz`.
FUZZTIME  ?= 30s

.PHONY: help dev test services build image vet staticcheck fuzz bench clean stop-services

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

dev: services build ## run the whole system locally on embedded defaults (docs/dev.md)
	AGENTRUNNER_TEMPORAL_BIN="$${AGENTRUNNER_TEMPORAL_BIN:-$$(. $(SERVICES_ENV); echo "$${AGENTRUNNER_TEMPORAL_BIN:-}")}" exec $(BIN) dev

test: services vet ## every test, with the real services (gofmt, vet, staticcheck, then go test -race)
	. $(SERVICES_ENV); \
	"$${AGENTRUNNER_STATICCHECK_BIN:?run make services}" ./...; \
	$(GO) test -race -count=1 -timeout 20m ./...; \
	echo "== workflow integration tests on the Temporal server with SQL persistence (docs/dev.md)"; \
	TEMPORAL_ADDRESS="$${AGENTRUNNER_TEMPORAL_SQL_ADDR:?run make services}" \
	  $(GO) test -race -count=1 -timeout 20m -run "$(SQL_TESTS)" -skip "$(SQL_SKIP)" ./workflows

services: ## install and start Postgres, Temporal, Vault, Chromium, podman, etcd + kube-apiserver as needed
	bash deploy/dev/services.sh

build: ## build bin/agentrunner with version stamps
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/agentrunner

IMAGE     ?= localhost/agentrunner:$(VERSION)
image: ## the release image from deploy/Dockerfile with podman: no Docker engine, no pull (deploy/image.sh)
	VERSION='$(VERSION)' COMMIT='$(COMMIT)' DATE='$(DATE)' bash deploy/image.sh '$(IMAGE)'

vet: ## go vet and gofmt check
	test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...

staticcheck: services ## staticcheck, the version pinned in deploy/dev/staticcheck.sh
	. $(SERVICES_ENV); "$${AGENTRUNNER_STATICCHECK_BIN:?run make services}" ./...

fuzz: ## run every fuzz target for FUZZTIME each
	for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$f"; $(GO) test $$pkg -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME); \
	  done; \
	done

bench: services ## the go benchmarks (results belong in docs/BENCHMARKS.md)
	. $(SERVICES_ENV); $(GO) test -run '^$$' -bench . -benchmem ./...

stop-services: ## stop the Temporal servers, Vault and kube-apiserver (+ etcd) started by `make services`
	bash deploy/dev/temporal.sh stop
	bash deploy/dev/temporal-server.sh stop
	[ ! -x deploy/dev/kube.sh ] || bash deploy/dev/kube.sh stop
	[ ! -x deploy/dev/vault.sh ] || bash deploy/dev/vault.sh stop

clean: ## remove build output
	rm -rf bin test-artifacts
