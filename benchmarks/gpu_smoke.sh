#!/usr/bin/env bash
# GPU smoke test of the vLLM backend against the HF backend, through the real CLI.
#
# On a CUDA machine with vLLM (pip install -e '.[dev,vllm]') and the model in the HF cache
# (sciqa prefetch --model Qwen/Qwen2-VL-2B-Instruct on a login node), run:
#     bash benchmarks/gpu_smoke.sh                    # 64 problems of the bundled sample
#     MODEL=/path/to/Qwen2-VL-2B-Instruct DATASET=derek-thomas/ScienceQA ROWS=64 bash benchmarks/gpu_smoke.sh
# It benchmarks the same problems with --backend hf and --backend vllm (each its own MLflow run in a
# throwaway local store), then prints rows/s of each (generation only, from the CSVs' per-row
# seconds, and wall time including model load) and how often the two backends agree.
set -euo pipefail

MODEL=${MODEL:-Qwen/Qwen2-VL-2B-Instruct}
DATASET=${DATASET:-sample}
ROWS=${ROWS:-64}
BATCH=${BATCH:-16}
MAX_NEW=${MAX_NEW:-128}
SETTING=${SETTING:-QTCH}
WORK=${WORK:-$(mktemp -d /tmp/sciqa-gpu-smoke.XXXXXX)}

python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this smoke test needs a GPU')"
python -c "import vllm" 2>/dev/null || { echo "vLLM is not installed: pip install -e '.[vllm]'" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python -c "import torch, transformers, vllm; print(f'torch {torch.__version__}  transformers {transformers.__version__}  vllm {vllm.__version__}')"

cd "$WORK"
export MLFLOW_TRACKING_URI="sqlite:///$WORK/mlruns.db" MLFLOW_EXPERIMENT_NAME=gpu-smoke
common=(--model "$MODEL" --dataset "$DATASET" --split validation --setting "$SETTING" --limit "$ROWS"
        --batch-size "$BATCH" --max-new-tokens "$MAX_NEW")

for backend in hf vllm; do
  start=$(date +%s.%N)
  extra=()
  [[ $backend == vllm ]] && extra=(--gpu-memory-utilization 0.85)
  sciqa benchmark --backend "$backend" --workdir "$WORK/$backend" "${common[@]}" "${extra[@]}" \
    > "$WORK/$backend.log" 2>&1 || { tail -30 "$WORK/$backend.log"; exit 1; }
  echo "$backend wall_s $(python -c "import time; print(round(time.time() - $start, 1))")" >> "$WORK/wall.txt"
done

python - "$WORK" <<'EOF'
import glob, sys
import pandas as pd

work = sys.argv[1]
wall = dict(line.split(" wall_s ") for line in open(f"{work}/wall.txt").read().splitlines())
dfs = {}
for b in ("hf", "vllm"):
    (path,) = glob.glob(f"{work}/{b}/*/*.csv")
    dfs[b] = pd.read_csv(path, dtype={"id": str}, keep_default_na=False).set_index("id")
    df = dfs[b]
    print(f"{b:5s} rows={len(df)} generation {len(df) / df['seconds'].sum():7.2f} rows/s  "
          f"wall {float(wall[b]):7.1f} s (with load)  mapped={(df['answer_index'] != '').mean():.0%}  "
          f"stop={(df['finish_reason'] == 'stop').mean():.0%}")
hf, vl = dfs["hf"], dfs["vllm"].reindex(dfs["hf"].index)
print(f"speed-up vllm/hf: {(len(vl) / vl['seconds'].sum()) / (len(hf) / hf['seconds'].sum()):.1f}x")
print(f"same answer index: {(hf['answer_index'] == vl['answer_index']).mean():.0%}   "
      f"identical raw output: {(hf['raw_output'] == vl['raw_output']).mean():.0%}")
EOF
echo "outputs and logs: $WORK"
