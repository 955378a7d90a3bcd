# APT-ROS developer entry points. Everything sets itself up on first use (see tools/setup.sh).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export PYTHON VENV

.PHONY: help setup setup-runtime test test-fast lint demo bench faults soak clean

help:
	@echo "make demo           train (cached), export, verify, run the simulated Franka closed loop, write demo_out/"
	@echo "make test           set up if needed, lint, run all tests"
	@echo "make setup          developer environment in $(VENV) (ROS 2 wheels, torch, ONNX Runtime, apt_msgs)"
	@echo "make setup-runtime  robot environment: ONNX Runtime / TensorRT path only, no torch"
	@echo "make lint           ruff, import contracts (lint-imports), mypy, vermin (Python >= 3.10), hadolint, shellcheck"
	@echo "make bench          inference, control and pre-processing benchmarks -> bench_out/report.md"
	@echo "make faults         fault-injection matrix over real processes -> bench_out/faults.md"
	@echo "make soak           one hour at 100 Hz with instruction switches and camera dropouts"

setup:
	@tools/setup.sh full

setup-runtime:
	@tools/setup.sh runtime

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/mypy
	@$(VENV)/bin/ruff format --check . || { echo "ruff format: run '$(VENV)/bin/ruff format .'"; exit 1; }
	$(VENV)/bin/vermin -q --no-tips --violations --eval-annotations -t=3.10- $$(git ls-files -co --exclude-standard '*.py')
	$(VENV)/bin/hadolint docker/*/Dockerfile
	$(VENV)/bin/shellcheck docker/*.sh tools/*.sh .ci/run

test: lint
	ROS_LOG_DIR=$${ROS_LOG_DIR:-$$(mktemp -d)} $(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

demo: setup
	$(PY) -m apt_policy.demo $(DEMO_ARGS)

bench: setup
	$(PY) -m apt_policy.bench $(BENCH_ARGS)

faults: setup
	$(PY) -m apt_policy.bench.faults $(FAULTS_ARGS)

soak: setup
	$(PY) -m apt_policy.bench.soak $(SOAK_ARGS)

clean:
	rm -rf build ros2_ws/build ros2_ws/install ros2_ws/log demo_out bench_out .pytest_cache
