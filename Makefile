# imgbuild — developer entry points. `make help` lists them.
CARGO ?= cargo
BIN   := target/release/imgbuild
NODE  ?= node1

.PHONY: all build test lint fmt deps plan validate clean help demo e2e images demo-fetch fixtures-components fixtures-bases

all: build ## Build the release binary (default)

build: ## Build target/release/imgbuild
	$(CARGO) build --release --locked

test: deps ## Run the whole test suite (installs missing tools first; the rootfs tests need root)
	IMGBUILD_TEST_ALL=1 $(CARGO) test --release --locked --all-targets

# clippy with the release profile, as make test builds: the build scripts' output (aws-lc's C
# library) and the proc-macros are then compiled once for both, not once per profile.
lint: ## rustfmt check and clippy with warnings as errors
	$(CARGO) fmt --check
	$(CARGO) clippy --release --locked --all-targets -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt

deps: ## Install what a fresh machine lacks (called by .ci/run)
	bash scripts/deps.sh

fixtures-components: ## The runnable component tarballs of the fixture mirror (JRE, CPython, ZooKeeper, Kafka, Storm; cached)
	bash -c '. scripts/fixtures.sh && fixtures_components'

fixtures-bases: ## The Debian bases make test builds (target/tmp; cached), made ahead (.ci/run: while the code compiles)
	bash -c '. scripts/fixtures.sh && fixtures_test_bases'

demo: deps ## From a local fixture mirror: build node1..3's images, boot the cluster, print its health
	bash scripts/demo.sh $(NODES)

e2e: deps ## demo, judged: update, the mixed cluster, SCRAM clients, the rolling-update rehearsal (a broken node must stop it)
	bash scripts/e2e.sh

images: deps build ## Build images from the real upstream URLs (NODES=node1 for one node; default all)
	$(BIN) $(or $(NODES),all)

demo-fetch: ## Lock and fetch the reference recipe's artifacts from the local fixture mirror
	bash scripts/demo-fetch.sh

plan: build ## Show the resolved plan of NODE (default node1) from recipes/cluster.yaml
	$(BIN) plan $(NODE)

validate: build ## Check recipes/cluster.yaml
	$(BIN) validate

clean: ## Remove build output (images/ keeps only its README)
	$(CARGO) clean

help: ## This list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

.PHONY: bench bench-deps bench-fetch bench-rootfs bench-flash bench-build bench-profile
bench: bench-fetch bench-rootfs bench-flash bench-build bench-profile ## Run every benchmark and rewrite BENCHMARKS.md

bench-deps: ## Install what the benchmarks need besides `make deps` (mkosi, debootstrap, perf)
	bash scripts/deps.sh bench

bench-fetch: bench-deps ## Fetch+verify of a 600 MiB artifact from a loopback server vs curl (BENCHMARKS.md)
	bash bench/fetch.sh

bench-rootfs: bench-deps ## Compose node1..3 root filesystems: shared tree once, marginal cost per node (BENCHMARKS.md)
	bash bench/rootfs.sh

bench-flash: bench-deps ## Flash node1's image to a file: imgbuild flash vs bmaptool copy and dd conv=sparse (BENCHMARKS.md)
	bash bench/flash.sh

bench-build: bench-deps ## Build node1..3: cold vs shell floor, marginal node, no-op rebuild, one change, peak memory (BENCHMARKS.md)
	bash bench/build.sh

bench-profile: bench-deps ## perf profile of a marginal node's build: CPU per process, hottest symbols (BENCHMARKS.md)
	bash bench/profile.sh
