#!/usr/bin/env bash
# Configures build/ the one way that scripts/setup.sh and scripts/test.sh both use (Release, Ninja,
# warnings as errors), so that test.sh reuses everything setup.sh compiled: a different option
# (KEEL_WERROR among them) would change the compile flags and rebuild it all.
#   bash scripts/configure.sh      extra cmake arguments in $KEEL_CMAKE_ARGS, e.g.
#   KEEL_CMAKE_ARGS=-DCMAKE_CXX_COMPILER_LAUNCHER=ccache bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC2086 # KEEL_CMAKE_ARGS is a list of arguments
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DKEEL_WERROR=ON ${KEEL_CMAKE_ARGS:-} \
  >/dev/null
