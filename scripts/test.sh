#!/usr/bin/env bash
# Builds keel with warnings as errors and runs the whole test suite.
#   bash scripts/test.sh [ctest arguments...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --deps
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DKEEL_WERROR=ON >/dev/null
ninja -C build
export OMP_WAIT_POLICY=PASSIVE
ctest --test-dir build --output-on-failure --timeout 900 "$@"
