#!/usr/bin/env bash
# Creates .venv-bench: a recent PyTorch from PyPI for the training-throughput peer
# (tests/bench/torch_llama.py). Idempotent: a venv whose torch already imports is left alone.
#
# PyPI's Linux torch wheel is the CUDA build. First try it with --no-deps plus its small pure-Python
# dependencies (~1.3 GB); that does not import on a machine without the CUDA libraries (libtorch.so
# links libtorch_cuda.so, which needs libcufile, libcusparseLt, libnvshmem, ...). Then install the
# nvidia-* dependencies too (~5.4 GB, ~40 s here) unless KEEL_BENCH_LEAN=1. If neither works the
# bench falls back to Debian's python3-torch 1.13, which has no fused attention.
#
# Usage: scripts/bench_env.sh [--force]   (prints the python to use on stdout, progress on stderr)
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="${KEEL_BENCH_VENV:-$repo_root/.venv-bench}"
base_python="${KEEL_BENCH_BASE_PYTHON:-/usr/bin/python3}"
torch_spec="${KEEL_BENCH_TORCH:-torch}"
# What torch imports on the CPU; the CUDA packages and triton come only in the second step.
pure_deps=(filelock typing-extensions sympy mpmath networkx jinja2 MarkupSafe fsspec numpy)
pip=("$venv/bin/python" -m pip install --disable-pip-version-check)

torch_works() {
  "$venv/bin/python" - <<'EOF' >/dev/null 2>&1
import torch
x = torch.randn(64, 64, requires_grad=True)
(x @ x).sum().backward()
assert x.grad is not None
EOF
}

report() {
  local version
  version=$("$venv/bin/python" -c 'import torch; print(torch.__version__)')
  echo "bench_env: torch $version in $venv ($(du -sh "$venv" | cut -f1)," \
       "$(( $(date +%s) - start )) s)" >&2
  echo "$venv/bin/python"
}

[[ "${1:-}" == "--force" ]] && rm -rf "$venv"
start=$(date +%s)

if [[ -x "$venv/bin/python" ]] && torch_works; then
  report
  exit 0
fi

[[ -x "$venv/bin/python" ]] || "$base_python" -m venv "$venv"
"${pip[@]}" --quiet --no-deps "$torch_spec" >&2
"${pip[@]}" --quiet "${pure_deps[@]}" >&2
if torch_works; then
  report
  exit 0
fi
echo "bench_env: torch without its CUDA dependencies does not import:" >&2
"$venv/bin/python" -c 'import torch' 2>&1 | tail -1 >&2 || true

if [[ "${KEEL_BENCH_LEAN:-0}" != 1 ]]; then
  echo "bench_env: installing torch's CUDA dependencies (several GB; KEEL_BENCH_LEAN=1 skips)" >&2
  version=$("$venv/bin/python" -m pip show torch | sed -n 's/^Version: //p')
  "${pip[@]}" --quiet "torch==$version" >&2
  if torch_works; then
    report
    exit 0
  fi
fi
echo "bench_env: no working torch in $venv; the bench will use $base_python" >&2
exit 1
