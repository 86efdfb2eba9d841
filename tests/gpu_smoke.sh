#!/usr/bin/env bash
# GPU smoke test: every CUDA path of the project on one GPU within ~10 minutes, on models the project builds
# offline (issue 16). Run from the repository root on a CUDA machine:
#
#   OUT=gpu-smoke bash tests/gpu_smoke.sh
#
# It uses the machine's own torch/transformers/peft (install the project with `pip install --no-deps -e .`).
# bitsandbytes (NF4, paged AdamW), lm-eval and snakemake are used where importable and reported as skipped
# otherwise. Each step's log and a summary land in $OUT; the exit status is non-zero if any step that ran failed.
set -uo pipefail
OUT=${OUT:-gpu-smoke}
PY=${PYTHON:-python}
mkdir -p "$OUT"
summary="$OUT/summary.txt"
status=0

step() {  # step NAME COMMAND...: run, log to $OUT/NAME.log, record the outcome and wall time
    local name=$1 start rc
    shift
    start=$(date +%s)
    "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    [ "$rc" = 0 ] || status=1
    echo "$name: $([ "$rc" = 0 ] && echo ok || echo "FAILED (exit $rc)") in $(( $(date +%s) - start )) s" | tee -a "$summary"
}

has() { "$PY" -c "import $1" > /dev/null 2>&1; }

"$PY" - <<'EOF' | tee "$summary" || exit 2
import torch, transformers, peft
assert torch.cuda.is_available(), "no CUDA device is visible"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}, "
      f"peft {peft.__version__}, device {torch.cuda.get_device_name(0)}")
EOF
for module in bitsandbytes lm_eval snakemake; do
    has "$module" && echo "$module: present" | tee -a "$summary" || echo "$module: absent (its steps are skipped)" | tee -a "$summary"
done

# 1. Every CUDA branch as a test: bf16 and sampled ∂L/∂φ, every method in bf16, FullIFT masters and paged AdamW,
#    NF4 training and the 4-bit inference path, device=cpu on a GPU host, the set_per_process_memory_fraction probe.
step test_cuda "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py -ra
# 2. The same unit tests as on CPU, now with CUDA visible (device=auto paths).
step test_units "$PY" -m pytest -q -p no:cacheprovider tests/test_delta.py tests/test_train.py tests/test_memory.py \
    -k "not killed" -ra
# 3. Step time and memory of every method, sampled vs dense ∂L/∂φ, on CUDA (ratio lines at the end of the log).
step bench_train "$PY" -m spiel.bench --device cuda --steps 25
step bench_train_sampled "$PY" -m spiel.bench --device cuda --steps 25 --grad-mode sampled
has bitsandbytes && step bench_generate "$PY" -m spiel.bench_generate --device cuda --tokens 32
# 4. The whole micro DAG on CUDA in bf16 (training, NF4, CUDA memory search, evaluation, tables, audit).
if has snakemake && has lm_eval && has bitsandbytes; then
    dag="$OUT/dag"
    mkdir -p "$dag"
    cp -r Snakefile workflow envs config .test profiles "$dag"/
    step dag bash -c "cd '$dag' && snakemake --cores 4 --configfile .test/config.yaml --config dtype=bfloat16"
else
    echo "dag: skipped (needs snakemake, lm-eval and bitsandbytes)" | tee -a "$summary"
fi
tail -n 4 "$OUT"/bench_*.log >> "$summary" 2> /dev/null
exit $status
