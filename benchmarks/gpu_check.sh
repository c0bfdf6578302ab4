#!/usr/bin/env bash
# The device check of issue 16 (docs: benchmarks/README.md; spec: shared/specs/scale.md, sections 5.3 and 5.4).
#
#   bash benchmarks/gpu_check.sh                                   # on a machine with one GPU, about 8 minutes
#   CMKDTOOL_GPU_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh     # the CPU smoke run (tiny sizes, under a minute)
#
# Steps: synth mfh; pretrain --device cuda in fp32, bf16, fp16 (and tf32 where the CLI has it); distill kd and
# distill feature; eval --format json; an interrupted run resumed with --resume against the uninterrupted one
# (dropout 0, to 1e-6); torchrun --standalone --nproc_per_node 1 with NCCL; pretrain --compile default;
# benchmarks/throughput.py --device cuda in fp32 (every loop, compiled ones included) and bf16. Each step is timed
# and gets a row (pass, FAIL or skipped) whatever the others do; a step over its time limit is killed and fails;
# once the budget (CMKDTOOL_GPU_CHECK_BUDGET seconds, default 510) is spent the remaining steps are skipped, so the
# script ends under the device's 10-minute command limit.
#
# Output: the table on stdout and, when $OUT is set, in $OUT/gpu_check.md (rewritten after every step, so a killed
# run still leaves the rows it finished), with each step's JSON (command, exit status, seconds, result, metrics),
# stdout and stderr tails in $OUT/gpu_check/ (without $OUT: in the work folder, whose path is printed).
# Installs nothing: a missing Python module, CUDA or NCCL is printed and the script exits 1.
#
# Environment: CMKDTOOL_PYTHON (the interpreter; default .venv/bin/python, then python3, then python: the first
# that imports torch), CMKDTOOL_GPU_CHECK_DEVICE (cuda, cuda:N or cpu), CMKDTOOL_GPU_CHECK_BUDGET (seconds),
# CMKDTOOL_GPU_CHECK_TP_ROWS, _TP_EPOCHS, _TP_REPEATS (throughput.py's --rows, --epochs, --repeats),
# CMKDTOOL_GPU_CHECK_KEEP=1 (keep the work folder with the data and checkpoints).
set -u

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
DEVICE=${CMKDTOOL_GPU_CHECK_DEVICE:-cuda}
BUDGET=${CMKDTOOL_GPU_CHECK_BUDGET:-510}
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"  # this tree's cmkdtool, whatever the venv points at
export PYTHONUNBUFFERED=1
unset CMKDTOOL_DEVICE CMKDTOOL_SEED  # the steps' own --device and default seed

now() { if [ -n "${EPOCHREALTIME:-}" ]; then echo "${EPOCHREALTIME/,/.}"; else date +%s.%N; fi; }
T_START=$(now)
elapsed() { awk -v a="$T_START" -v b="$(now)" 'BEGIN { printf "%.0f", b - a }'; }

# ---- sizes: the device run, or the CPU smoke run -----------------------------------------------------------------
if [ "${DEVICE%%:*}" = cuda ]; then
  SMOKE=0
  TRAIN=4000 VAL=2000 TEST=2000 EPOCHS=20 STOP=8 LR=0.001
  MIN_TEACHER=0.85 MIN_STUDENT=0.60
  TP_ROWS=${CMKDTOOL_GPU_CHECK_TP_ROWS:-196864}  # 768 x 256 train rows: no short last batch, one compiled shape
  TP_EPOCHS=${CMKDTOOL_GPU_CHECK_TP_EPOCHS:-2}
  TP_REPEATS=${CMKDTOOL_GPU_CHECK_TP_REPEATS:-3}
  TP_EXTRA=()
elif [ "$DEVICE" = cpu ]; then
  SMOKE=1
  TRAIN=600 VAL=400 TEST=400 EPOCHS=4 STOP=2 LR=0.01
  MIN_TEACHER=0.70 MIN_STUDENT=0.55
  TP_ROWS=${CMKDTOOL_GPU_CHECK_TP_ROWS:-1280}
  TP_EPOCHS=${CMKDTOOL_GPU_CHECK_TP_EPOCHS:-1}
  TP_REPEATS=${CMKDTOOL_GPU_CHECK_TP_REPEATS:-1}
  TP_EXTRA=(--dim 64 --profile-steps 2 --efficiency)
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # tiny models: one thread each is faster, and immune to load
else
  echo "gpu_check: CMKDTOOL_GPU_CHECK_DEVICE must be cuda, cuda:N or cpu, not '$DEVICE'" >&2
  exit 2
fi

# ---- the interpreter and what it must import (nothing is installed) -----------------------------------------------
PY=
for c in "${CMKDTOOL_PYTHON:-}" "$ROOT/.venv/bin/python" python3 python; do
  [ -n "$c" ] || continue
  if "$c" -c 'import torch' >/dev/null 2>&1; then PY=$c; break; fi
done
if [ -z "$PY" ]; then
  echo "gpu_check: no Python that imports torch (tried \$CMKDTOOL_PYTHON, .venv/bin/python, python3, python);" \
    "set CMKDTOOL_PYTHON to one. Nothing was installed." >&2
  exit 1
fi
# prints the environment line on stdout when everything is there
if ! ENV_LINE=$("$PY" - "$DEVICE" <<'EOF'
import importlib, platform, subprocess, sys

device = sys.argv[1]
missing = []
for mod in ("torch", "numpy", "pyarrow", "safetensors", "typer", "rich", "tqdm"):
    try:
        importlib.import_module(mod)
    except Exception as e:  # noqa: BLE001
        missing.append(f"{mod} ({type(e).__name__}: {e})")
if not missing:
    try:
        importlib.import_module("cmkdtool.cli.app")
        importlib.import_module("cmkdtool.pipelines.train")
    except Exception as e:  # noqa: BLE001
        missing.append(f"cmkdtool from src/ ({type(e).__name__}: {e})")
import torch

if not missing and device.startswith("cuda"):
    if not torch.cuda.is_available():
        missing.append(
            f"CUDA: torch {torch.__version__} (built for CUDA {torch.version.cuda}) sees no GPU; "
            "check nvidia-smi and that the driver supports that CUDA version"
        )
    elif not torch.distributed.is_available() or not torch.distributed.is_nccl_available():
        print("gpu_check: note: this torch has no NCCL; the torchrun row will fail", file=sys.stderr)
if missing:
    print(f"gpu_check: missing with {sys.executable}:", file=sys.stderr)
    for m in missing:
        print(f"  - {m}", file=sys.stderr)
    print("Nothing was installed; use an environment that has them (CMKDTOOL_PYTHON=...).", file=sys.stderr)
    sys.exit(1)
parts = [f"torch {torch.__version__}", f"python {platform.python_version()}"]
if device.startswith("cuda"):
    i = torch.device(device).index or 0
    cap = ".".join(map(str, torch.cuda.get_device_capability(i)))
    parts.insert(0, f"{torch.cuda.get_device_name(i)} (sm {cap})")
    parts.append(f"CUDA {torch.version.cuda}")
    try:
        q = "driver_version,clocks.sm,clocks.max.sm,clocks.mem"
        cmd = ["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader", "-i", str(i)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
        d, sm, smax, mem = [f.strip() for f in out.split(",")]
        parts.append(f"driver {d}, clocks SM {sm} of {smax}, memory {mem}")
    except Exception:  # noqa: BLE001
        parts.append("driver ? (nvidia-smi failed)")
    try:
        v = torch.cuda.nccl.version()
        parts.append(f"NCCL {'.'.join(map(str, v)) if isinstance(v, tuple) else v}")
    except Exception:  # noqa: BLE001
        parts.append("NCCL missing")
else:
    parts.insert(0, f"CPU ({torch.get_num_threads()} threads)")
print(", ".join(parts))
EOF
); then
  exit 1
fi
HAVE_TIMEOUT=0
command -v timeout >/dev/null 2>&1 && HAVE_TIMEOUT=1

# ---- where things go ------------------------------------------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX") || exit 1
if [ "${CMKDTOOL_GPU_CHECK_KEEP:-0}" != 1 ]; then trap 'rm -rf "$WORK"' EXIT; fi
if [ -n "${OUT:-}" ]; then
  RAW="$OUT/gpu_check"
  MD="$OUT/gpu_check.md"
else
  RAW="$WORK/raw"
  MD="$WORK/gpu_check.md"
  trap - EXIT  # the results live in the work folder: keep it
fi
mkdir -p "$RAW" || exit 1
export RAW CHECK_DEVICE="$DEVICE"

# the checks (one Python program, its first argument the kind of check) write $RAW/<step>.json and print
# "result<TAB>detail", then optional extra table rows
read -r -d '' CHECK_PY <<'EOF'
import json, math, os, struct, sys

kind, args = sys.argv[1], sys.argv[2:]
raw, name = os.environ["RAW"], os.environ["STEP_NAME"]
rc, secs = int(os.environ.get("STEP_RC", "0")), float(os.environ.get("STEP_SECS", "0"))
device = os.environ["CHECK_DEVICE"]
metrics, extra = {}, []


def tail(path, n=20):
    try:
        with open(path, errors="replace") as f:
            return f.read().splitlines()[-n:]
    except OSError:
        return []


def failure():
    """Why a command failed, in one line: its timeout, or the last line of its stderr."""
    if rc in (124, 137):
        return f"timed out after {secs:.0f} s (exit {rc})"
    lines = [ln for ln in tail(f"{raw}/{name}.err", 200) if ln.strip()]
    errs = [ln for ln in lines if "error" in ln.lower()]
    return f"exit {rc}: " + ((errs or lines or ["no stderr"])[-1].strip()[:240])


def meta(path):
    """The cmkdtool training record of a checkpoint, from its safetensors header (no torch)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return json.loads(header.get("__metadata__", {}).get("cmkdtool.train", "{}"))


def history(path):
    with open(f"{path}.history.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def learned(path, minimum):
    """(ok, detail): val accuracy of the kept epoch, finite losses, trained on the expected device."""
    rec, hist = meta(path), history(path)
    acc = rec.get("best_metrics", {}).get("val/accuracy")
    finite = all(
        math.isfinite(v) for row in hist for k, v in row.items() if k.endswith("loss") and isinstance(v, float)
    )
    on = str(rec.get("device", "?"))
    metrics.update(val_accuracy=acc, best_epoch=rec.get("best_epoch"), epochs=len(hist), finite=finite, device=on)
    loss = metrics["final_train_loss"] = hist[-1].get("train/loss") if hist else None
    problems = []
    if acc is None or acc < minimum:
        problems.append(f"val acc {acc} < {minimum}")
    if not finite:
        problems.append("non-finite losses")
    if on.split(":")[0] != device.split(":")[0]:
        problems.append(f"trained on {on}, not {device}")
    detail = f"val acc {acc} (epoch {rec.get('best_epoch')}), train loss {loss}, {on}"
    if isinstance(acc, float) and isinstance(loss, float):
        detail = f"val acc {acc:.4f} (epoch {rec.get('best_epoch')}), train loss {loss:.4g}, {on}"
    return not problems, "; ".join(problems + [detail]) if problems else detail


def max_diff(a_path, b_path):
    """Largest absolute difference between two checkpoints' tensors (inf if their names differ)."""
    try:
        from safetensors.numpy import load_file  # no torch import: float32 checkpoints

        a, b = load_file(a_path), load_file(b_path)
        to = lambda v: v.astype("float64")  # noqa: E731
    except (TypeError, ValueError):  # a dtype numpy lacks (bfloat16)
        from safetensors.torch import load_file

        a, b = load_file(a_path), load_file(b_path)
        to = lambda v: v.double().numpy()  # noqa: E731
    if a.keys() != b.keys():
        return math.inf
    diffs = [abs(to(a[k]) - to(b[k])) for k in a]
    return max((float(d.max()) for d in diffs if d.size), default=0.0)


result, detail = "FAIL", ""
try:
    if kind == "skip":
        result, detail = "skipped", args[0]
    elif rc != 0 and kind != "resume" and not (kind == "throughput" and os.path.exists(args[0])):
        detail = failure()
    elif kind == "synth":
        ok = os.path.getsize(args[0]) > 0
        result, detail = ("pass" if ok else "FAIL"), f"{args[1]} rows"
    elif kind == "learn":  # path minimum [reference max_points]
        ok, detail = learned(args[0], float(args[1]))
        if ok and len(args) > 2:
            ref = meta(args[2]).get("best_metrics", {}).get("val/accuracy")
            gap = abs(metrics["val_accuracy"] - ref) * 100
            metrics.update(reference_val_accuracy=ref, gap_points=gap)
            detail += f"; {gap:.2f} points from fp32 (max {args[3]})"
            ok = gap <= float(args[3])
        if ok and len(args) > 4 and args[4] == "inductor":  # --compile: inductor must have written its cache
            files = sum(len(fs) for _, _, fs in os.walk(args[5])) if os.path.isdir(args[5]) else 0
            metrics["inductor_cache_files"] = files
            detail += f"; inductor cache {files} files"
            if files == 0:
                ok, detail = False, detail + " (nothing compiled: is --compile wired in the trainer?)"
        result = "pass" if ok else "FAIL"
    elif kind == "eval":
        out = json.load(open(f"{raw}/{name}.out"))
        metrics.update({k: out.get(k) for k in ("split", "n", "accuracy", "ua", "f1_macro")})
        ok = out.get("accuracy", 0) >= float(args[0]) and out.get("n") == int(args[1])
        result = "pass" if ok else "FAIL"
        detail = f"test n {out.get('n')}, accuracy {out.get('accuracy'):.4f}, ua {out.get('ua'):.4f}"
    elif kind == "resume":  # full part tolerance stop interrupted_rc
        full, part, tol, stop, first_rc = args[0], args[1], float(args[2]), int(args[3]), int(args[4])
        if first_rc != 130:
            detail = f"the interrupted run exited {first_rc}, expected 130 (stopped after epoch {stop})"
        elif rc != 0:
            detail = "the resumed run " + failure()
        else:
            d = max_diff(full, part)
            ha, hb = history(full), history(part)
            hd = max(
                (abs(x[k] - y[k]) for x, y in zip(ha, hb) for k in x if isinstance(x[k], float) and k in y),
                default=0.0,
            )
            same = [r["epoch"] for r in ha] == [r["epoch"] for r in hb]
            metrics.update(max_abs_diff_tensors=d, max_abs_diff_history=hd, stopped_after_epoch=stop)
            ok = d <= tol and hd <= tol and same
            result = "pass" if ok else "FAIL"
            detail = (
                f"stopped after epoch {stop}, resumed: max abs diff weights {d:.2e}, history {hd:.2e} (tol {tol:g})"
                + ("" if same else "; epochs differ")
            )
    elif kind == "torchrun":  # path minimum reference
        ok, detail = learned(args[0], float(args[1]))
        err = "\n".join(tail(f"{raw}/{name}.err", 100000))
        nccl = "NCCL INFO" in err or "NCCL version" in err
        d = max_diff(args[0], args[2])
        metrics.update(nccl_initialised=nccl, max_abs_diff_vs_one_process=d)
        detail += "; NCCL " + (
            "initialised"
            if nccl
            else "not initialised (no NCCL line with NCCL_DEBUG=INFO: the run did not join a process group)"
        )
        detail += f"; max abs diff vs the one-process fp32 run {d:.2e}"
        result = "pass" if ok and nccl else "FAIL"
    elif kind == "throughput":
        rec = json.load(open(args[0]))
        metrics = {"results": os.path.basename(args[0]), **rec}
        res = rec["methods"]
        errors = {m: r["error"] for m, r in res.items() if "error" in r}
        env = rec.get("env", {})
        peak = rec.get("peak")
        detail = (
            f"{rec['settings']['rows']} rows x {rec['settings']['epochs']} epochs, batch "
            f"{rec['settings']['batch_size']}, best of {rec['settings']['repeats']}; "
            f"{rec.get('flops_per_step', 0) / 1e6:.0f} MFLOP/step; peak "
            + (f"{peak['device']} {peak['kind']} {peak['tflops']:g} TFLOPS" if peak else "n/a")
            + f"; {env.get('device_name', '?')}"
        )
        result = "pass" if not errors and rc == 0 else "FAIL"
        if rc != 0:
            detail = f"{failure()}; {detail}"
        hand, bare = res.get("hand-written", {}).get("samples_per_s"), res.get("bare", {}).get("samples_per_s")
        for m, r in res.items():
            if "error" in r:
                extra.append(f"|  | &nbsp;&nbsp;{m} | FAIL |  | {r['error'][:200]} |")
                continue
            p = r.get("profile", {})
            parts = [f"{r['samples_per_s']:,.0f} samples/s"]
            if hand:
                parts.append(f"{r['samples_per_s'] / hand:.2f}x hand-written")
            if bare:
                parts.append(f"{r['samples_per_s'] / bare:.2f}x bare")
            if p.get("gpu_busy") is not None:
                parts.append(f"GPU busy {p['gpu_busy']:.1%}, {p.get('kernels_per_step', 0):.0f} kernels/step")
            elif "error" in p:
                parts.append(f"profiler: {p['error'][:80]}")
            parts.append(f"CPU {r.get('cpu_us_per_step', float('nan')):.0f} µs/step")
            mfu = r.get("mfu")
            parts.append(f"MFU {mfu:.3%}" if mfu is not None else "MFU n/a")
            if r.get("compile_s") is not None:
                parts.append(f"compile {r['compile_s']:.0f} s")
            extra.append(f"|  | &nbsp;&nbsp;{m} | pass | {r.get('best_s', 0):.1f} | {', '.join(parts)} |")
    else:
        detail = f"unknown check {kind}"
except Exception as e:  # noqa: BLE001 - a broken output is this step's failure, not the script's
    result, detail = "FAIL", f"check failed: {type(e).__name__}: {e}"[:300]

record = {
    "step": name,
    "title": os.environ.get("STEP_TITLE", name),
    "result": result,
    "seconds": round(secs, 2),
    "exit_status": rc,
    "command": os.environ.get("STEP_CMD", ""),
    "detail": detail,
    "metrics": metrics,
    "stderr_tail": tail(f"{raw}/{name}.err"),
}
with open(f"{raw}/{name}.json", "w") as f:
    json.dump(record, f, indent=2, default=str)
    f.write("\n")
print(f"{result}\t{detail}".replace("|", "/").replace("\n", " "))
for row in extra:
    print(row)
EOF

# ---- steps and the table ---------------------------------------------------------------------------------------------
ROWS=()
N=0
FAILED=0
HEADER=""

write_table() {
  {
    printf '%s\n' "$HEADER"
    echo "| # | step | result | seconds | details |"
    echo "|---:|---|---|---:|---|"
    printf '%s\n' "${ROWS[@]}"
  } >"$MD.tmp" && mv "$MD.tmp" "$MD"
}

# record STEP TITLE CHECK-ARGS...: run the check, add the row(s), rewrite the table
record() {
  local step=$1 title=$2
  shift 2
  local out first rest result detail
  out=$(STEP_NAME=$step STEP_TITLE=$title "$PY" -c "$CHECK_PY" "$@" 2>>"$RAW/checks.err")
  [ -n "$out" ] || out=$(printf 'FAIL\tthe check itself failed (see gpu_check/checks.err)')
  first=${out%%$'\n'*}
  rest=""
  [ "$first" != "$out" ] && rest=${out#*$'\n'}
  result=${first%%$'\t'*}
  detail=${first#*$'\t'}
  N=$((N + 1))
  [ "$result" = FAIL ] && FAILED=$((FAILED + 1))
  ROWS+=("| $N | $title | $result | ${STEP_SECS:-0} | $detail |")
  if [ -n "$rest" ]; then
    while IFS= read -r line; do ROWS+=("$line"); done <<<"$rest"
  fi
  write_table
  printf '[%4ss] %-28s %-7s %s\n' "$(elapsed)" "$title" "$result" "$detail" >&2
}

# run STEP LIMIT CMD...: run a command with a time limit (cut to what is left of the budget); sets STEP_RC,
# STEP_SECS; stdout and stderr go to $RAW/STEP.out / .err (stderr trimmed to its last 300 lines afterwards).
# Returns 1 (and sets STEP_SKIP) when the budget is spent.
run() {
  local step=$1 limit=$2
  shift 2
  local left=$((BUDGET - $(elapsed)))
  STEP_SKIP=""
  STEP_CMD="$*"
  export STEP_CMD
  if [ "$left" -lt 15 ]; then
    STEP_SKIP="skipped: time budget ($BUDGET s) spent"
    STEP_RC=0 STEP_SECS=0
    export STEP_RC STEP_SECS
    return 1
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local t0
  t0=$(now)
  if [ "$HAVE_TIMEOUT" = 1 ]; then
    timeout -k 10 "$limit" "$@" >"$RAW/$step.out" 2>"$RAW/$step.err"
  else
    "$@" >"$RAW/$step.out" 2>"$RAW/$step.err"
  fi
  STEP_RC=$?
  STEP_SECS=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
  export STEP_RC STEP_SECS
  if [ "$(wc -l <"$RAW/$step.err")" -gt 300 ]; then
    tail -n 300 "$RAW/$step.err" >"$RAW/$step.err.tmp" && mv "$RAW/$step.err.tmp" "$RAW/$step.err"
  fi
  return 0
}

skip() {  # skip STEP TITLE REASON
  STEP_RC=0 STEP_SECS=0 STEP_CMD=""
  export STEP_RC STEP_SECS STEP_CMD
  record "$1" "$2" skip "$3"
}

# step STEP TITLE LIMIT CHECK-ARGS... -- CMD...: run and record (or record the budget skip)
step() {
  local s=$1 title=$2 limit=$3
  shift 3
  local check=()
  while [ "$#" -gt 0 ] && [ "$1" != -- ]; do check+=("$1"); shift; done
  shift
  if run "$s" "$limit" "$@"; then
    record "$s" "$title" "${check[@]}"
  else
    record "$s" "$title" skip "$STEP_SKIP"
  fi
}

CMK=("$PY" -m cmkdtool)
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "unknown")
DIRTY=$(git -C "$ROOT" status --porcelain 2>/dev/null | grep -c . || true)
HEADER="# cmkdtool GPU check ($DEVICE$([ "$SMOKE" = 1 ] && echo ', CPU smoke sizes'))

$(date -u '+%Y-%m-%d %H:%M UTC'), $(hostname 2>/dev/null || echo '?'), commit $COMMIT (${DIRTY:-?} changed files), ${ENV_LINE:-environment unknown}; python $PY; budget ${BUDGET} s
"
echo "gpu_check: $HEADER" | head -3 >&2
echo "gpu_check: raw results in $RAW" >&2

DATA="$WORK/mfh.parquet"
COMMON=(-i xa --epochs "$EPOCHS" --batch-size 64 --lr "$LR" --dropout 0 --device "$DEVICE" -q)
NO_CUDA="skipped: no CUDA (CPU smoke run)"

# 1. data
step synth "synth mfh" 60 synth "$DATA" $((TRAIN + VAL + TEST)) -- \
  "${CMK[@]}" synth mfh --train "$TRAIN" --val "$VAL" --test "$TEST" -q -o "$DATA"

# 2. pretrain in each precision (fp32 is the reference for the others and for --resume, torchrun, --compile)
FP32="$WORK/fp32.safetensors"
step pretrain_fp32 "pretrain fp32" 120 learn "$FP32" "$MIN_TEACHER" -- \
  "${CMK[@]}" pretrain "$DATA" "${COMMON[@]}" --precision fp32 -o "$FP32"
if [ "$SMOKE" = 1 ]; then
  skip pretrain_bf16 "pretrain bf16" "$NO_CUDA"
  skip pretrain_fp16 "pretrain fp16" "$NO_CUDA"
  skip pretrain_tf32 "pretrain tf32" "$NO_CUDA"
else
  step pretrain_bf16 "pretrain bf16" 120 learn "$WORK/bf16.safetensors" "$MIN_TEACHER" "$FP32" 1.0 -- \
    "${CMK[@]}" pretrain "$DATA" "${COMMON[@]}" --precision bf16 -o "$WORK/bf16.safetensors"
  step pretrain_fp16 "pretrain fp16" 120 learn "$WORK/fp16.safetensors" "$MIN_TEACHER" -- \
    "${CMK[@]}" pretrain "$DATA" "${COMMON[@]}" --precision fp16 -o "$WORK/fp16.safetensors"
  if "${CMK[@]}" pretrain --help 2>/dev/null | grep -q tf32; then
    step pretrain_tf32 "pretrain tf32" 120 learn "$WORK/tf32.safetensors" "$MIN_TEACHER" "$FP32" 1.0 -- \
      "${CMK[@]}" pretrain "$DATA" "${COMMON[@]}" --precision tf32 -o "$WORK/tf32.safetensors"
  else
    skip pretrain_tf32 "pretrain tf32" "skipped: this cmkdtool has no --precision tf32"
  fi
fi

# 3. distillation (student on xb, taught by the fp32 teacher) and eval
step distill_kd "distill kd" 120 learn "$WORK/kd.safetensors" "$MIN_STUDENT" -- \
  "${CMK[@]}" distill kd "$DATA" --teacher "$FP32" "${COMMON[@]/xa/xb}" -o "$WORK/kd.safetensors"
step distill_feature "distill feature" 120 learn "$WORK/feature.safetensors" "$MIN_STUDENT" -- \
  "${CMK[@]}" distill feature "$DATA" --teacher "$FP32" "${COMMON[@]/xa/xb}" -o "$WORK/feature.safetensors"
step eval "eval --format json" 60 eval "$MIN_STUDENT" "$TEST" -- \
  "${CMK[@]}" eval "$WORK/kd.safetensors" "$DATA" --device "$DEVICE" --format json -q

# 4. --resume: the fp32 run stopped (as by Ctrl-C) after the state of epoch $STOP, then resumed to the end; it must
#    equal the uninterrupted fp32 run. In-process, as tests/conftest.py's resume_check: a state after every epoch.
PART="$WORK/resumed.safetensors"
if run resume_interrupt 120 "$PY" - "$STOP" pretrain "$DATA" "${COMMON[@]}" --precision fp32 -o "$PART" <<'EOF'
import sys

from cmkdtool.engine import trainer

stop = int(sys.argv[1])
trainer.STATE_INTERVAL_S = 0.0
real_save = trainer.Trainer.save


def save_then_stop(self, epoch, *args, **kwargs):
    real_save(self, epoch, *args, **kwargs)
    if epoch == stop:
        raise KeyboardInterrupt


trainer.Trainer.save = save_then_stop
from cmkdtool.cli.app import main  # noqa: E402

main(sys.argv[2:])
EOF
then
  FIRST_RC=$STEP_RC
  FIRST_SECS=$STEP_SECS
  if run resume "$((120))" "${CMK[@]}" pretrain "$DATA" "${COMMON[@]}" --precision fp32 --resume -o "$PART"; then
    STEP_SECS=$(awk -v a="$FIRST_SECS" -v b="$STEP_SECS" 'BEGIN { printf "%.1f", a + b }')
    export STEP_SECS
    record resume "--resume (interrupted = full)" resume "$FP32" "$PART" 1e-6 "$STOP" "$FIRST_RC"
  else
    record resume "--resume (interrupted = full)" skip "$STEP_SKIP"
  fi
else
  record resume "--resume (interrupted = full)" skip "$STEP_SKIP"
fi

# 5. torchrun, one process, NCCL: the same command line as the fp32 run; fails unless NCCL was initialised (a run
#    that stays single-process under torchrun does not exercise the DDP path)
if [ "$SMOKE" = 1 ]; then
  skip torchrun "torchrun nproc 1 (NCCL)" "$NO_CUDA"
else
  TR="$WORK/torchrun.safetensors"
  step torchrun "torchrun nproc 1 (NCCL)" 180 torchrun "$TR" "$MIN_TEACHER" "$FP32" -- \
    env NCCL_DEBUG=INFO OMP_NUM_THREADS=4 "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 \
    -m cmkdtool pretrain "$DATA" "${COMMON[@]}" --precision fp32 -o "$TR"
fi

# 6. --compile default (a fresh inductor cache: its files show that something was compiled)
if [ "$SMOKE" = 1 ]; then
  skip compile "pretrain --compile default" "$NO_CUDA"
else
  CC="$WORK/compile.safetensors"
  step compile "pretrain --compile default" 240 learn "$CC" "$MIN_TEACHER" "$FP32" 1.0 inductor "$WORK/inductor" -- \
    env TORCHINDUCTOR_CACHE_DIR="$WORK/inductor" \
    "${CMK[@]}" pretrain "$DATA" "${COMMON[@]}" --precision fp32 --compile default -o "$CC"
fi

# 7. throughput: every loop in fp32 (the compiled ones included), the eager ones in bf16
TPD=${DEVICE%%:*}
rm -f "$RAW"/throughput_*.results.json
step throughput_fp32 "throughput.py fp32" 240 throughput "$RAW/throughput_fp32.results.json" -- \
  "$PY" benchmarks/throughput.py --device "$TPD" --precision fp32 --rows "$TP_ROWS" --epochs "$TP_EPOCHS" \
  --repeats "$TP_REPEATS" "${TP_EXTRA[@]}" --json "$RAW/throughput_fp32.results.json"
if [ "$SMOKE" = 1 ]; then
  skip throughput_bf16 "throughput.py bf16" "$NO_CUDA"
else
  step throughput_bf16 "throughput.py bf16" 150 throughput "$RAW/throughput_bf16.results.json" -- \
    "$PY" benchmarks/throughput.py --device "$TPD" --precision bf16 --rows "$TP_ROWS" --epochs "$TP_EPOCHS" \
    --repeats "$TP_REPEATS" --methods cmkdtool,hand-written,bare --json "$RAW/throughput_bf16.results.json"
fi

# ---- the table --------------------------------------------------------------------------------------------------------
TOTAL=$(elapsed)
ROWS+=("" "$N steps, $FAILED failed, ${TOTAL} s in all. Raw JSON per step: gpu_check/<step>.json (stdout and"
  "stderr tails beside it; throughput.py's own JSON: gpu_check/throughput_*.results.json; all steps: summary.json).")
write_table
"$PY" - "$RAW" "$TOTAL" "$FAILED" <<'EOF' 2>/dev/null
import glob, json, os, sys
raw, total, failed = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
steps = []
for p in sorted(glob.glob(os.path.join(raw, "*.json"))):
    if os.path.basename(p) == "summary.json" or p.endswith(".results.json"):
        continue
    with open(p) as f:
        steps.append(json.load(f))
with open(os.path.join(raw, "summary.json"), "w") as f:
    json.dump({"seconds": total, "failed": failed, "steps": steps}, f, indent=2, default=str)
EOF
echo
cat "$MD"
[ -n "${OUT:-}" ] || echo "(table and raw results: $MD, $RAW)"
[ "$FAILED" -eq 0 ]
