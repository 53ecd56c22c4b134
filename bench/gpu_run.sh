#!/usr/bin/env bash
# Everything a lent GPU must show, in one script (bench/README.md, "On a GPU machine", gives the device calls):
#
#   data   pack the shared archives into shards (skipped where a set is already packed): CIFAR-10 train and
#          test (JPEG, passed through) and the 50k EDM images (PNG, passed through)
#   tests  pytest -m gpu
#   bench  one benchmark at a time (each under its own time limit) on the CIFAR-10 ×10 + EDM ×1 mixture, JSON (with
#          the hardware) into the results folder, then the report: the loader on all cores, the colour stage eager
#          and compiled, and a batch-size sweep of train.py's loader; end to end with the default loader threads,
#          then the CPU pipeline on all cores; the model ceiling of SimCLR and BYOL (ResNet-18, batch 512) eager,
#          compiled and compiled with CUDA graphs; scale; formats (20,000 images)
#   train  a short ResNet-18 SimCLR train.py run (batch 512), its config and metrics into the results folder
#
#   bash bench/gpu_run.sh [options] [STEP ...]          STEP: data tests bench train (default: all four)
#   bash bench/gpu_run.sh --call 1|2 [options]          the two device calls of bench/README.md ("On a GPU machine"):
#                                                       1 = data tests, bench loader,end-to-end;
#                                                       2 = data, bench model,scale,formats, train
#
#   --device cuda|cpu   (cuda)            --quick       small sizes, lower timing minimums (JSON says quick)
#   --data DIR          the archives      (/tmp/bundle/data, where ../shared/tools/device-dali puts them)
#   --bundle DIR        DALI + webdataset (/tmp/bundle; its site/ goes on PYTHONPATH when present)
#   --work DIR          shards, runs, results (/tmp/gpu-run)
#   --out DIR           where gpu-run.tar.gz and gpu-run.log go ($OUT when set, else WORK/out)
#   --only LIST         benchmarks of the bench step (loader,model,end-to-end,scale,formats; pack is CPU-only)
#   --limit N           pack at most N images per set (a CPU smoke test)
#   --steps N           training steps (400; --quick 4)
#   --deadline S        stop starting commands, and cut the running one short, so the whole script ends
#                       within S seconds (570: a device call may run 600 s); 0 = no deadline
#   --dry-run           print the commands, run nothing
#   PYTHON=PATH         the interpreter (python3; a CPU smoke run here: PYTHON=.venv/bin/python ... --device cpu --quick --limit 2000)
#
# Every step appends to WORK/results; after every command the script refreshes OUT/gpu-run.tar.gz (all of
# WORK/results so far: extract it into bench/results/) and OUT/gpu-run.log, so a call cut short still
# brings back what was measured. Steps are independent once `data` has run on the machine, so they can be
# spread over several device calls (each under 10 minutes).
set -uo pipefail

device=cuda quick=0 data=/tmp/bundle/data bundle=/tmp/bundle work=/tmp/gpu-run out="${OUT:-}" only=""
limit="" steps="" dry=0 deadline=570 call=""
benches_default=loader,model,end-to-end,scale,formats
stepnames=()
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    --data) data=$2; shift 2 ;;
    --bundle) bundle=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    --limit) limit=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --deadline) deadline=$2; shift 2 ;;
    --dry-run) dry=1; shift ;;
    --call) call=$2; shift 2 ;;
    data|tests|bench|train) stepnames+=("$1"); shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "gpu_run.sh: unknown argument '$1'; see --help" >&2; exit 2 ;;
  esac
done
case "$call" in
  "") ;;
  1) stepnames=(data tests bench); only=${only:-loader,end-to-end} ;;
  2) stepnames=(data bench train); only=${only:-model,scale,formats} ;;
  *) echo "gpu_run.sh: --call 1 or 2, not '$call'" >&2; exit 2 ;;
esac
[ ${#stepnames[@]} -eq 0 ] && stepnames=(data tests bench train)
[ "$device" = cuda ] || [ "$device" = cpu ] || { echo "gpu_run.sh: --device cuda or cpu, not '$device'" >&2; exit 2; }
out=${out:-$work/out}
only=${only:-$benches_default}
py=${PYTHON:-python3}
repo=$(cd "$(dirname "$0")/.." && pwd)
shards=$work/shards
results=$work/results
log=$out/gpu-run.log
if [ -d "$bundle/site" ]; then
  export PYTHONPATH="$bundle/site:$repo${PYTHONPATH:+:$PYTHONPATH}" PATH="$bundle/site/bin:$PATH"
else
  export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
qflag=() ; [ $quick = 1 ] && qflag=(--quick)
lflag=() ; [ -n "$limit" ] && lflag=(--limit "$limit")
failed=()

# run LIMIT_S NAME CMD...: one command under a time limit (and the deadline), its output in the log; a failure
# is recorded, not fatal; the results archive is refreshed after it
run() {
  local limit_s=$1 name=$2
  shift 2
  echo "+ $*" | tee -a "$log"
  [ $dry = 1 ] && return 0
  if [ "$deadline" -gt 0 ]; then
    local left=$((deadline - SECONDS - 20))
    if [ $left -lt 30 ]; then
      echo "= $name: not started, the deadline is near" | tee -a "$log"
      failed+=("$name(no-time)")
      return 0
    fi
    [ $left -lt "$limit_s" ] && limit_s=$left
  fi
  local t0=$SECONDS
  timeout --kill-after=10 "$limit_s" "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  echo "= $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$log"
  [ "$rc" = 0 ] || failed+=("$name")
  collect
}

collect() {
  [ $dry = 1 ] && return 0
  mkdir -p "$results"
  tar -czf "$out/gpu-run.tar.gz.tmp" -C "$results" . && mv "$out/gpu-run.tar.gz.tmp" "$out/gpu-run.tar.gz"
}

mkdir -p "$out" "$results" "$shards"
trap 'collect; echo "results: $out/gpu-run.tar.gz ($(ls "$results" | wc -l) files; extract into bench/results/)"' EXIT
cd "$repo"
echo "== gpu_run.sh $(date -u +%FT%TZ) device=$device quick=$quick steps: ${stepnames[*]}" | tee -a "$log"
run 60 hardware "$py" -c "import json; from bench.harness import hardware_info; print(json.dumps(hardware_info()))"
[ "$device" = cuda ] && run 30 nvidia-smi nvidia-smi

for step in "${stepnames[@]}"; do
  case "$step" in
    data)  # a set already packed on this machine (an earlier call) is kept
      [ -f "$shards/cifar10-train/manifest.json" ] || run 300 pack-cifar10-train "$py" -m shards pack \
        "$data/cifar10-jpg.tar.gz" --subdir cifar10/train --kind real --name cifar10 --format jpg --shuffle-seed 0 \
        --overwrite -q "${lflag[@]}" --out "$shards/cifar10-train"
      [ -f "$shards/cifar10-test/manifest.json" ] || run 300 pack-cifar10-test "$py" -m shards pack \
        "$data/cifar10-jpg.tar.gz" --subdir cifar10/test --split test --kind real --name cifar10-test --format jpg \
        --shuffle-seed 0 --overwrite -q "${lflag[@]}" --out "$shards/cifar10-test"
      [ -f "$shards/edm/manifest.json" ] || run 300 pack-edm "$py" -m shards pack "$data/edm-cifar10-50k-png.tar.gz" \
        --kind generated --name edm --fid 1.96 --format png --shuffle-seed 0 --overwrite -q "${lflag[@]}" --out "$shards/edm"
      ;;
    tests)
      run 300 tests "$py" -m pytest -m gpu tests -q -p no:cacheprovider
      ;;
    bench)
      IFS=, read -ra names <<<"$only"
      mix=(--shards "$shards/cifar10-train:10" --shards "$shards/edm:1")
      threads=$(nproc)
      for name in "${names[@]}"; do
        case "$name" in
          loader)  # every backend with the machine's cores, the colour stage eager and compiled, batch 512, then
            # train.py's loader at other batch sizes (a per-batch overhead shows as a rising curve); the peers where
            # installed (else their rows say why); one throughput round (each row also has a memory pass and an audit)
            run 300 bench-loader "$py" -m bench loader --device "$device" "${qflag[@]}" --colour eager,compiled \
              --batch-size 512 --sweep 64,128,256,1024 --workers "$threads" --rounds 1 "${mix[@]}" --out-dir "$results" ;;
          end-to-end)  # the default loader threads (both pipelines), then the CPU pipeline on all cores
            run 240 bench-end-to-end "$py" -m bench end-to-end --device "$device" "${qflag[@]}" "${mix[@]}" --out-dir "$results"
            run 150 bench-end-to-end-threads "$py" -m bench end-to-end --device "$device" "${qflag[@]}" \
              --num-threads "$threads" --loader-device cpu "${mix[@]}" --out-dir "$results" ;;
          model)  # SimCLR and BYOL: eager, --compile on, --compile cudagraphs (bench model's defaults on a GPU)
            run 300 bench-model "$py" -m bench model --device "$device" "${qflag[@]}" --out-dir "$results" ;;
          formats)
            run 150 bench-formats "$py" -m bench formats --device "$device" "${qflag[@]}" --limit 20000 \
              --workers "$threads" "${mix[@]}" --out-dir "$results" ;;
          *)
            run 200 "bench-$name" "$py" -m bench "$name" --device "$device" "${qflag[@]}" "${mix[@]}" \
              --out-dir "$results" ;;
        esac
      done
      [ $dry = 0 ] && "$py" -m bench.report --results-dir "$results" >/dev/null 2>&1
      ;;
    train)
      n=${steps:-400} bs=512 extra=()
      [ $quick = 1 ] && { n=${steps:-4}; bs=32; extra=(--knn-train-limit 500 --eval-limit 500); }
      rm -rf "$work/train"
      run 240 train "$py" train.py --shards "$shards/cifar10-train:10" --shards "$shards/edm:1" \
        --eval-shards "$shards/cifar10-test" --method simclr --backbone resnet18 --aug adainf --batch-size "$bs" \
        --steps "$n" --eval-every $((n / 2)) --probe-epochs 20 --ckpt-every 0 \
        --device "$device" --no-progress --log-every 50 "${extra[@]}" --out "$work/train"
      if [ $dry = 0 ] && [ -d "$work/train" ]; then
        host=$("$py" -c "from bench.harness import host_kind; print(host_kind())" 2>/dev/null || echo host)
        stamp=$(date +%Y%m%d-%H%M%S)
        for f in config.yaml metrics.jsonl; do
          [ -f "$work/train/$f" ] && cp "$work/train/$f" "$results/$host-$stamp-train-${f}"
        done
      fi
      ;;
  esac
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: ${failed[*]} (see $log)" | tee -a "$log"
  exit 1
fi
echo "all steps passed" | tee -a "$log"
