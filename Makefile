# Set-up is part of every target: `make demo` and `make test` each work on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = "0" ] || echo sudo)
MIDI_DEV ?= ../shared/data/midi/dev


.PHONY: install install-eval system-deps test test-slow demo lint bench gpu-check clean

install: $(STAMP)

# libfluidsynth is the one system library we need (MIDI rendering); install it only when missing.
system-deps:
	@if ! ldconfig -p 2>/dev/null | grep -q 'libfluidsynth\.so'; then \
		echo "installing libfluidsynth3 with apt-get"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq libfluidsynth3; \
	fi

# constraints.txt holds the exact versions we test (pyproject.toml a range). Basic Pitch (note
# transcription for evaluation) is installed without its dependencies: they pin TensorFlow and
# NumPy < 2; we run the ONNX model its wheel ships through onnxruntime (pyramid_cli/metrics/transcribe.py).
$(STAMP): pyproject.toml constraints.txt | system-deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	$(PY) -m pip install -q --no-deps -c constraints.txt basic-pitch
	touch $(STAMP)

# Everything `pyramid eval` can use: the above plus ViSQOL (visqol-python, slow on a CPU).
install-eval: install
	$(PY) -m pip install -q -c constraints.txt -e '.[eval]'

test: install system-deps
	$(PY) -m pytest -q

test-slow: install system-deps
	$(PY) -m pytest -q -m slow

# The demo: the bundled codec on the bundled example (encode, decode at 1/2/3 levels, per-level
# table), a 20-second piece from the bundled LM (with the 3-minute estimate for this machine),
# then a small corpus build from MIDI. Files are left in demo/.
demo: install system-deps
	$(PY) -m pyramid_cli doctor
	$(PY) examples/codec_demo.py examples/example.flac --out-dir demo
	$(PY) -m pyramid_cli info demo/example.pyr
	$(PY) examples/generate_demo.py --seconds 20 --seed 7 --out-dir demo
	@if [ -d "$(MIDI_DEV)" ]; then \
		$(PY) -m pyramid_cli dataset build --procedural 2 --procedural-seconds 20 \
			--midi-dir $(MIDI_DEV) --limit 2 --max-seconds 30 --out demo/corpus; \
	else \
		$(PY) -m pyramid_cli dataset build --procedural 2 --procedural-seconds 20 --out demo/corpus; \
	fi
	$(PY) -m pyramid_cli dataset info demo/corpus

lint: install
	$(VENV)/bin/ruff check pyramid_cli tests examples tools
	$(VENV)/bin/mypy pyramid_cli

# Codec speed and memory against the peers and the DAC-n2 baseline (10 s and 3 min inputs, both
# allocators), generation speed, and pyramid encode/decode memory from 10 s to an hour: `pyramid
# bench`. Installs what it needs when missing: the peers (extra `bench`: descript-audio-codec,
# snac, encodec; never a runtime dependency) and libjemalloc2. About an hour on 2 CPU cores.
# Extra options: make bench BENCH_ARGS="--threads 2 --markdown".
bench: install system-deps
	$(PY) -m pip install -q -e '.[bench]'
	@if ! ldconfig -p 2>/dev/null | grep -q 'libjemalloc\.so'; then \
		echo "installing libjemalloc2 with apt-get"; \
		$(SUDO) apt-get install -y -qq libjemalloc2 || echo "no jemalloc: the bench measures the system allocator only"; \
	fi
	$(PY) examples/bench_render.py
	$(PY) -m pyramid_cli bench --allocator both $(BENCH_ARGS)

# The prepared GPU check (issue 14): machine, `pytest -m cuda`, bf16 training with exact resume,
# 3-minute pieces (paper-size LM eager and compiled, bundled LM), `pyramid bench --device cuda`, all
# in under 8 minutes; reports in $(GPU_CHECK_OUT)/gpu-check.{json,md}. DEVICE=cpu: a tiny dry run
# (about a minute; `make test-slow` runs it too).
DEVICE ?= cuda
GPU_CHECK_OUT ?= gpu-check
gpu-check: install
	$(PY) tools/gpu_check.py --device $(DEVICE) --out $(GPU_CHECK_OUT)

clean:
	rm -rf demo gpu-check build dist .pytest_cache .mypy_cache .ruff_cache
