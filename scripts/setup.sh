#!/usr/bin/env bash
# Installs keel's build dependencies from Debian packages and builds the keel program into
# build/ (configured by scripts/configure.sh; scripts/test.sh builds the tests on top of it).
#   bash scripts/setup.sh          # install packages, configure, build build/keel
#   bash scripts/setup.sh --deps   # install packages only
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(build-essential cmake ninja-build pkg-config zlib1g-dev
  libopenblas-openmp-dev libyaml-cpp-dev nlohmann-json3-dev libgtest-dev libgmock-dev
  libopenmpi-dev openmpi-bin protobuf-compiler libprotobuf-dev libgrpc++-dev protobuf-compiler-grpc)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "keel setup: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
[ "${1:-}" = "--deps" ] && exit 0

bash scripts/configure.sh
ninja -C build keel
echo "keel setup: built build/keel"
