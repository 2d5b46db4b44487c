# The two commands of the README:  make demo   and   make test
# Both create .venv on first use and install the packages from this checkout into it.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
PIP     = $(BIN)/python -m pip install -q --disable-pip-version-check
BASE_STAMP = $(VENV)/.base-stamp
TEST_STAMP = $(VENV)/.test-stamp
PKGS    = -e . -e backends/cpu_numpy -e backends/cuda_cupy -e conformance
# The CPU build of torch, installed first: a bare "torch" would pull a multi-GB CUDA build.
TORCH   = torch==2.13.0
# What the tests use beyond the packages: transformers (real HF checkpoints), tokenizers
# (tokenizer.json), triton (torch_triton kernels under TRITON_INTERPRET=1), array-api-compat.
TEST_EXTRAS = "pytest>=8" "array-api-compat>=1.6" "transformers>=4.46" "tokenizers>=0.15" "triton>=3.0" "matplotlib>=3.7"

.PHONY: demo test test-core test-example test-torch install clean

$(BASE_STAMP): pyproject.toml backends/cpu_numpy/pyproject.toml backends/cuda_cupy/pyproject.toml conformance/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) $(PKGS)
	touch $(BASE_STAMP)

$(TEST_STAMP): $(BASE_STAMP) backends/torch_triton/pyproject.toml examples/backend_numba/pyproject.toml
	$(PIP) $(TORCH)
	$(PIP) $(TEST_EXTRAS)
	$(PIP) --no-deps -e backends/torch_triton
	$(PIP) -e examples/backend_numba
	touch $(TEST_STAMP)

install: $(BASE_STAMP)

demo: $(BASE_STAMP)
	$(BIN)/mamba-core demo

# Every test, then the certificates: cpu_numpy, the worked numba example, and torch_triton on
# the CPU (TRITON_INTERPRET=1: Triton kernels in the interpreter, default compositions elsewhere).
test: test-core test-example test-torch

test-core: $(TEST_STAMP)
	$(BIN)/python -m pytest -q
	$(BIN)/mamba-conformance cpu_numpy --json out/cpu_numpy.certificate.json --quiet
	$(BIN)/mamba-conformance cpu_numpy_invariant --json out/cpu_numpy_invariant.certificate.json --quiet
	$(BIN)/mamba-core bench --quick --backends cpu_numpy --out out/bench --no-progress

test-example: $(TEST_STAMP)
	$(BIN)/python -m pytest -q examples/backend_numba
	$(BIN)/mamba-conformance example_numba --json out/example_numba.certificate.json --quiet

# The interpreter is one Python thread: the model checks of the certificate run beside the
# tests and then the op checks, one process a core (CI has two), each pinned to one thread.
test-torch: $(TEST_STAMP)
	mkdir -p out
	export TRITON_INTERPRET=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1; \
	$(BIN)/mamba-conformance torch_triton --dtype float32 --only 'mixer:*' --only 'lm:*' \
	    --json out/torch_triton.models.certificate.json --quiet > out/torch_triton.models.log 2>&1 & models=$$!; \
	$(BIN)/python -m pytest -q backends/torch_triton/tests && \
	$(BIN)/mamba-conformance torch_triton --dtype float32 --only 'op:*' --only 'invariance:*' \
	    --json out/torch_triton.ops.certificate.json --quiet; ops=$$?; \
	wait $$models; m=$$?; cat out/torch_triton.models.log; test $$ops -eq 0 -a $$m -eq 0
	TRITON_INTERPRET=1 $(BIN)/mamba-core bench --quick --backends torch_triton --level ops --families mamba2 \
	    --no-external --out out/bench --no-progress

clean:
	rm -rf $(VENV) out
