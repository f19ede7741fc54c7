#!/usr/bin/env bash
# dl-run's GPU check (#22), one command on a CUDA machine, within 8 minutes: the gpu-marked tests
# (tests/test_gpu.py), experiment=mnist_speedrun to 99% test accuracy (its training seconds), and the
# benchmark's GPU rows (dl-run against its baselines, all in the same precision); then one table.
#
#   scripts/gpu_check.sh /data/mnist        # the folder holding MNIST/raw (nothing is downloaded)
#   scripts/gpu_check.sh                    # no MNIST: the tests only; the speedrun and benchmark are skipped
#
# Needs only python3 with torch (and torchvision, tensorboard, rich, pytest) beside dl-run's own dependencies.
# Without an installed dl-run it runs the checkout as it is: Hydra, OmegaConf and antlr4 come from wheels in
# .whl/ of the repository (see the README's Performance section), installed into a scratch folder, offline.
# On a machine without CUDA it says what it skipped and exits 0. Exit status 1: a check failed.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
mnist=${1:-}
python=${PYTHON:-python3}
command -v "$python" >/dev/null || python=python
work=$(mktemp -d "${TMPDIR:-/tmp}/dlrun-gpu-check.XXXXXX")
trap 'rm -rf "$work"' EXIT
started=$(date +%s)

# ---- dl-run importable: installed, or this checkout with its configs as the package dlrun.configs ----------
if ! "$python" -c "import dlrun.configs, hydra" 2>/dev/null; then
    site="$work/site"
    mkdir -p "$site"
    if ! "$python" -c "import hydra, omegaconf" 2>/dev/null; then
        if ! ls "$root"/.whl/*.whl >/dev/null 2>&1; then
            echo "Hydra is not installed and $root/.whl holds no wheels: pip install -e . (or put hydra-core," \
                 "omegaconf and antlr4-python3-runtime wheels in .whl/)." >&2
            exit 2
        fi
        "$python" -m pip install -q --no-index --no-deps --no-compile --target "$site" "$root"/.whl/*.whl || exit 2
    fi
    cp -r "$root/src/dlrun" "$site/dlrun" && cp -r "$root/configs" "$site/dlrun/configs"
    [ -d "$root/src/hydra_plugins" ] && cp -r "$root/src/hydra_plugins" "$site/hydra_plugins"
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1

cuda=$("$python" -c "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else '')")
torch_version=$("$python" -c "import torch; print(torch.__version__)")
echo "dl-run GPU check: torch $torch_version, GPU: ${cuda:-none}"

# ---- 1. the gpu-marked tests ----------------------------------------------------------------------------
tests_status="skipped"
if "$python" -c "import pytest" 2>/dev/null; then
    echo "[1/3] pytest -m gpu tests/test_gpu.py"
    (cd "$root" && timeout 270 "$python" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py -rs \
        --junitxml="$work/gpu-tests.xml" 2>&1 | tee "$work/gpu-tests.log" | tail -25)
    tests_rc=${PIPESTATUS[0]}
    tests_status=$(grep -Eo '[0-9]+ (passed|failed|skipped|error|errors)' "$work/gpu-tests.log" | tr '\n' ' ')
    [ "$tests_rc" -eq 124 ] && tests_status="$tests_status(stopped at 270 s)"
else
    echo "[1/3] pytest is not installed: the gpu-marked tests are skipped"
    tests_rc=0
fi

# ---- 2 and 3. the speedrun to 99% and the benchmark's GPU rows ---------------------------------------------
bench_rc=0
if [ -z "$cuda" ]; then
    skipped="no CUDA GPU here"
elif [ -z "$mnist" ] || [ ! -d "$mnist/MNIST/raw" ]; then
    skipped="no MNIST folder given (the folder holding MNIST/raw: scripts/gpu_check.sh /path/to/it)"
else
    skipped=""
    echo "[2-3/3] benchmark.py --device cuda: overhead and framework rows, then experiment=mnist_speedrun"
    # The speedrun row is the benchmark's own (it runs it on CUDA); one round per row, to fit in 8 minutes.
    (cd "$root" && timeout 180 "$python" scripts/benchmark.py --device cuda --only overhead,framework \
        --repeats 1 --mnist-root "$mnist" --json "$work/benchmark.json" 2>&1 | tee "$work/benchmark.log" | tail -20)
    bench_rc=${PIPESTATUS[0]}
fi
[ -n "$skipped" ] && echo "[2-3/3] skipped experiment=mnist_speedrun and the benchmark's GPU rows: $skipped"

# ---- one table ----------------------------------------------------------------------------------------------
"$python" - "$work" "${cuda:-none}" "$tests_status" "$skipped" "$(( $(date +%s) - started ))" <<'EOF'
import json, sys
from pathlib import Path

work, gpu, tests, skipped, seconds = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
rows = [("gpu-marked tests (tests/test_gpu.py)", tests.strip() or "no result", "")]
report = work / "benchmark.json"
if report.exists():
    data = json.loads(report.read_text())
    for r in data["rows"]:
        if "skipped" in r:
            rows.append((r["case"], "skipped: " + r["skipped"], ""))
            continue
        unit = r.get("unit", "s")
        numbers = " / ".join(f"{r[k]:.2f} {unit}" for k in ("dl-run", "baseline") if r.get(k) is not None)
        ratio = f"ratio {r['ratio']:.3f} (target {r['target']})" if r.get("ratio") is not None else r.get("target", "")
        holds = {True: "holds", False: "DOES NOT HOLD", None: ""}[r["holds"]]
        rows.append((r["case"], numbers, f"{ratio} {holds} {r.get('note', '')}".strip()))
    precision = data.get("precision", "?")
else:
    rows.append(("experiment=mnist_speedrun to 99% test accuracy", "skipped: " + (skipped or "benchmark failed"), ""))
    rows.append(("benchmark GPU rows (dl-run / baselines)", "skipped: " + (skipped or "benchmark failed"), ""))
    precision = "-"
width = max(len(r[0]) for r in rows)
print(f"\ndl-run GPU check on {gpu}, precision {precision} for dl-run and baselines, {seconds} s in all")
for case, value, note in rows:
    print(f"{case:<{width}}  {value}  {note}".rstrip())
EOF
if [ "$tests_rc" -ne 0 ] && [ "$tests_rc" -ne 5 ]; then exit 1; fi  # 5: pytest collected nothing to run
[ "$bench_rc" -ne 0 ] && exit 1
exit 0
