# patchctl. `make demo` runs sites of nodes over shaped links and reports;
# `make test` is what CI runs.
GO      ?= go
BIN     := bin/patchctl
DEMOBIN := bin/patchctl-demo
PKGS    := ./...
EXAMPLE := example

.PHONY: all build test vet fmt-check fuzz bench example demo clean

all: build

# One static binary: no cgo, so it runs on any Linux of the architecture.
build:
	CGO_ENABLED=0 $(GO) build -buildvcs=auto -o $(BIN) ./cmd/patchctl

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(PKGS)

# The whole suite with the race detector, in random order.
test: fmt-check vet
	$(GO) test -race -shuffle=on -timeout 15m $(PKGS)

# Each fuzz target briefly; FUZZTIME=5m for longer runs.
FUZZTIME ?= 15s
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
	  dir=$$($(GO) list -f '{{.Dir}}' $$pkg); \
	  for t in $$(grep -ho '^func Fuzz[A-Za-z0-9_]*' $$dir/*_test.go 2>/dev/null | sed 's/^func //'); do \
	    echo "== $$pkg $$t"; \
	    $(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 1s $$pkg; \
	  done; \
	done

# Benchmarks, three runs each, printed as a table of medians.
# SCALE=DemoScale adds the 500-node run once (build tag scale; about ten
# minutes, most of it the no-swarm baseline).
BENCH      ?= .
BENCHCOUNT ?= 3
SCALE      ?=
bench:
	{ $(GO) test -run '^$$' -bench '$(BENCH)' -count $(BENCHCOUNT) -timeout 90m $(PKGS); \
	  if [ -n "$(SCALE)" ]; then $(GO) test -tags scale -run '^$$' -bench '$(SCALE)' -count 1 -timeout 60m ./testnet; fi; } \
	  | tee bench.out | $(GO) run ./cmd/benchtable

# An origin, a proxy per site and the sites' nodes in one process over shaped
# loopback links: a generated pack published, distributed and installed, the
# same with the swarm off, and a second version with 2% changed; then the
# report. DEMOFLAGS="--sites 5 --nodes 10 --json" to change it. The demo
# links the in-process testnet, so it is a build of its own (tag demo).
DEMOFLAGS ?=
demo:
	$(GO) build -tags demo -o $(DEMOBIN) ./cmd/patchctl
	$(DEMOBIN) demo $(DEMOFLAGS)

# Generate a signing key and trust root, publish a generated service pack,
# verify and extract it, then serve it on loopback and fetch it into a second
# data dir as another machine would, all under ./example.
example: build
	rm -rf $(EXAMPLE) && mkdir -p $(EXAMPLE)/pack/tools
	$(GO) run ./testnet/packgen/cmd/mkpack -size 32MiB -out $(EXAMPLE)/pack/HF-S041000005-012.zip
	$(GO) run ./testnet/packgen/cmd/mkpack -size 1MiB -out $(EXAMPLE)/pack/tools/setup.bin
	$(BIN) key generate --out $(EXAMPLE)/release
	$(BIN) trust init --key $(EXAMPLE)/release.key --out $(EXAMPLE)/trust.json
	$(BIN) --data-dir $(EXAMPLE)/data publish --key $(EXAMPLE)/release.key --name HF-S041000005-012 --out $(EXAMPLE)/HF-S041000005-012.json $(EXAMPLE)/pack
	$(BIN) --data-dir $(EXAMPLE)/data verify --trust $(EXAMPLE)/trust.json HF-S041000005-012
	$(BIN) --data-dir $(EXAMPLE)/data extract --trust $(EXAMPLE)/trust.json HF-S041000005-012 $(EXAMPLE)/installed
	$(BIN) --data-dir $(EXAMPLE)/data ls
	cd $(EXAMPLE) && find pack installed -type f | sort -t/ -k2 | xargs sha256sum
	@set -e; cd $(EXAMPLE); \
	../$(BIN) --data-dir data serve --listen /ip4/127.0.0.1/tcp/0 > serve.addr 2> serve.log & pid=$$!; \
	trap 'kill $$pid 2>/dev/null' EXIT; \
	for i in $$(seq 100); do [ -s serve.addr ] && break; sleep 0.1; done; \
	addr=$$(head -1 serve.addr); echo "serving at $$addr"; \
	echo "../$(BIN) --data-dir other fetch --trust trust.json --peer $$addr --extract fetched HF-S041000005-012"; \
	../$(BIN) --data-dir other fetch --trust trust.json --peer $$addr --listen /ip4/127.0.0.1/tcp/0 --extract fetched HF-S041000005-012; \
	../$(BIN) --data-dir other verify --trust trust.json HF-S041000005-012

clean:
	rm -rf bin $(EXAMPLE) bench.out
