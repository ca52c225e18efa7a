#!/usr/bin/env bash
# Builds keel and its tests in build/ (configured as scripts/setup.sh configures it, so what setup
# built is reused) and runs the whole test suite.
#   bash scripts/test.sh [ctest arguments...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --deps
bash scripts/configure.sh
ninja -C build
export OMP_WAIT_POLICY=PASSIVE
ctest --test-dir build --output-on-failure --timeout 900 -j "$(nproc)" "$@"
