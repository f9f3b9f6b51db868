# One-command entry points for a fresh machine. Everything lives in .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo web web-screenshots venv clean

$(STAMP): pyproject.toml requirements/nnunet-nodeps.txt requirements/nnunet.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU build of torch first, so that the dependency below does not pull a CUDA build.
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[test,web]"
	# nnU-Net v2 without its timm/torchvision chain (requirements/README.md)
	$(PY) -m pip install --quiet --no-deps -r requirements/nnunet-nodeps.txt
	$(PY) -m pip install --quiet -r requirements/nnunet.txt
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) -m GraTaSegmenterLib.cli demo -o grata-demo --overwrite

# The web page on http://127.0.0.1:8080/ (PORT=..., DATA=folder of images to open and save into).
PORT ?= 8080
DATA ?= grata-web-data
web: $(STAMP)
	mkdir -p $(DATA)
	$(PY) -m GraTaSegmenterLib.cli web --port $(PORT) --data $(DATA)

# The README's screenshots of the page, taken by the browser test (needs /usr/bin/chromium).
web-screenshots: $(STAMP)
	GRATA_SCREENSHOTS=$(CURDIR)/Resources $(PY) -m pytest -q Testing/test_web_browser.py

clean:
	rm -rf $(VENV) .pytest_cache
