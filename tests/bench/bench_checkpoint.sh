#!/usr/bin/env bash
# Checkpoint bench: how fast keel saves and loads a checkpoint, against what the disk itself does
# with the same bytes in the same run. Save: keel's "saved in" (state files written and fsynced,
# meta.json, the rename and `latest`) against `dd conv=fsync` of one file of the same size. Load:
# keel's "resumed ... in" (meta.json, every state file mapped and each rank's rectangles copied)
# against `dd` reading the same files, both from a cold page cache when it can be dropped (root)
# and from a warm one. One rank without ZeRO, and 2 ranks under ZeRO 3 (each writes its half).
# Then what the checksums cost: one rank's state of the same model saved and loaded with them and
# as keel did before them (keel_checkpoint_checksums, built beside keel), and their own time.
#
#   tests/bench/bench_checkpoint.sh [--keel build/keel] [--config configs/bench_stories15m.yaml]
set -euo pipefail

keel=${KEEL:-build/keel}
config=configs/bench_stories15m.yaml
while [ $# -gt 0 ]; do
  case "$1" in
    --keel) keel=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    -h|--help) sed -n 2,11p "$0"; exit 0 ;;
    *) echo "bench_checkpoint.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ -x "$keel" ] || { echo "bench_checkpoint.sh: no keel binary at $keel (--keel PATH)" >&2; exit 1; }
out=$(mktemp -d "${TMPDIR:-/tmp}/keel_bench_ckpt.XXXXXX")
trap 'rm -rf "$out"' EXIT
export OMP_WAIT_POLICY=PASSIVE OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches 2> /dev/null; }
cold="cold"; drop_caches || cold="warm (cannot drop the page cache here)"

# Seconds of a `dd` run, from its own report.
dd_seconds() { dd "$@" 2>&1 | awk '/copied/ { for (i = 1; i <= NF; ++i) if ($i ~ /^s,?$/) print $(i-1) }'; }
mbps() { python3 -c "print(f'{$1 / 1e6 / $2:.0f}')"; }
number_after() { grep -o "$1 [0-9.e+-]*" | head -1 | awk '{print $NF}'; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "disk: $(df -h "$out" | awk 'NR==2 {print $1", "$2}') ($out)"
echo "config: $config"
echo
printf '%-22s %10s %10s %10s %12s %10s %12s\n' layout MB "save s" "save MB/s" "dd write MB/s" "load s" "dd read MB/s"
run_layout() {
  local name=$1 ranks=$2 stage=$3 dir=$out/$1
  local launch=("$keel")
  [ "$ranks" -gt 1 ] && launch=(mpirun -np "$ranks" --oversubscribe --bind-to none -x OMP_WAIT_POLICY "$keel")
  "${launch[@]}" train "$config" --set training.max_steps=1 --set training.save_steps=1 \
    --set parallel.zero_stage="$stage" --set training.output_dir="$dir" > "$dir.save.log" 2>&1
  local save bytes write_s load read_s
  save=$(number_after "saved in" < "$dir.save.log")
  bytes=$(du -sb "$dir/checkpoints/step_00000001" | cut -f1)
  # The disk's own write of the same bytes, fsynced, in 16 MiB blocks.
  write_s=$(dd_seconds if=/dev/zero of="$out/dd_file" bs=16M count=$((bytes / 16777216 + 1)) conv=fsync)
  rm -f "$out/dd_file"
  drop_caches || true
  "${launch[@]}" train "$config" --set training.max_steps=1 --set parallel.zero_stage="$stage" \
    --set training.output_dir="$dir" > "$dir.load.log" 2>&1
  load=$(number_after "at step 1 in" < "$dir.load.log")
  drop_caches || true
  read_s=0
  for f in "$dir"/checkpoints/step_00000001/*.safetensors; do
    read_s=$(python3 -c "print($read_s + $(dd_seconds if="$f" of=/dev/null bs=16M))")
  done
  printf '%-22s %10.1f %10.3f %10s %12s %10.3f %12s\n' "$name" "$(python3 -c "print($bytes/1e6)")" \
    "$save" "$(mbps "$bytes" "$save")" "$(mbps "$((16777216 * (bytes / 16777216 + 1)))" "$write_s")" \
    "$load" "$(mbps "$bytes" "$read_s")"
}
run_layout "1 rank, no ZeRO" 1 0
run_layout "2 ranks, ZeRO 3" 2 3
echo
echo "load: page cache $cold before keel's load and before dd's read"
echo "keel's load time also includes checking meta.json and the config; dd reads only the state files"

# The checksums' share (tests/bench/checkpoint_checksums.cpp).
checksums=$(dirname "$keel")/tests/bench/keel_checkpoint_checksums
echo
if [ -x "$checksums" ]; then
  mkdir -p "$out/checksums"
  "$checksums" "$config" "$out/checksums" --repeats 5
else
  echo "no $checksums: build it (ninja -C build keel_checkpoint_checksums) for the checksums' cost"
fi
