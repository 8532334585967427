#!/usr/bin/env bash
# Takes docs/mlflow_ui_kd_vs_golden.png, the MLflow UI's chart view of the README's headline command
# `mlflow run . -e train_prefix -P teacher=true` (KD) beside its golden twin (`-P teacher=false`),
# grouped by sciqa.teacher and sciqa.variant, and docs/mlflow_ui_run_page.png, the KD run's own
# page (its Datasets: train, validation, teacher; params; metrics) and its system metrics.
#
#   apt-get update && apt-get install -y --no-install-recommends chromium   # Debian's, runs headless
#   docs/screenshot_ui.sh [CHART.png] [RUN_PAGE.png]       # from the checkout; minutes on 2 CPU cores
#
# It starts a private `mlflow server` (sqlite, 127.0.0.1, a free port), runs the two commands exactly
# as users type them against it, stores the view (filter, group-by, loss charts) as a shared view
# state of the experiment (the UI's own "Share" mechanism: experiment tag
# mlflow.sharedViewState.<key>, URL ?viewStateShareKey=<key>), screenshots it with headless
# Chromium, and stops the server.
set -euo pipefail
OUT=${1:-docs/mlflow_ui_kd_vs_golden.png}
RUN_PAGE=${2:-docs/mlflow_ui_run_page.png}
PROJECT=$(pwd)
WORK=$(mktemp -d)
PORT=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URI=http://127.0.0.1:$PORT

setsid python -m mlflow server --host 127.0.0.1 --port "$PORT" --backend-store-uri "sqlite:///$WORK/mlflow.db" \
    --artifacts-destination "$WORK/artifacts" --workers 1 >"$WORK/server.log" 2>&1 &
SERVER=$!
trap 'kill -- -$SERVER 2>/dev/null || true' EXIT
for _ in $(seq 120); do curl -sf "$URI/health" >/dev/null && break; sleep 1; done
curl -sf "$URI/health" >/dev/null || { tail -20 "$WORK/server.log"; exit 1; }

export MLFLOW_TRACKING_URI=$URI MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL=2
cp "$PROJECT/MLproject" "$PROJECT/conda.yaml" "$WORK/"  # a fresh copy: its sciqa-work starts empty
for teacher in true false; do
    (cd "$WORK" && mlflow run . -e train_prefix --env-manager local --experiment-name sciqa -P teacher=$teacher) \
        2>&1 | grep -E "reusing|run:|succeeded|failed" || true
done

# The view: train_prefix runs, grouped by sciqa.teacher and sciqa.variant (one line per adapter), and a
# section with train_loss and val_loss_golden line charts (x = step = epoch), two columns, tall cards.
EXP_ID=$(python - <<'PY'
import json

import mlflow

client = mlflow.MlflowClient()
exp = client.get_experiment_by_name("sciqa")
section = "sciqa-kd-vs-golden"


def line(metric):
    return {"uuid": f"sciqa-{metric}", "type": "LINE", "runsCountToCompare": 10, "metricSectionId": section,
            "deleted": False, "isGenerated": False, "displayName": metric, "metricKey": metric,
            "selectedMetricKeys": [metric], "lineSmoothness": 0, "xAxisScaleType": "linear", "scaleType": "linear",
            "range": {}, "xAxisKey": "step", "selectedXAxisMetricKey": "", "yAxisKey": "metric",
            "yAxisExpressions": [], "ignoreOutliers": False, "useGlobalXaxisKey": True, "useGlobalLineSmoothing": True}


state = {
    "searchFilter": "tags.sciqa.step = 'train_prefix'",
    "compareRunsMode": "CHART",
    "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": "sciqa.teacher"},
                                                                {"mode": "tag", "groupByData": "sciqa.variant"}]},
    "useGroupedValuesInCharts": True,
    "hideEmptyCharts": True,
    "compareRunSections": [{"uuid": section, "name": "KD vs golden loss (step = epoch)", "display": True,
                            "isReordered": False, "columns": 2, "cardHeight": 520}],
    "compareRunCharts": [line("train_loss"), line("val_loss_golden")],
    "isAccordionReordered": True,
}
client.set_experiment_tag(exp.experiment_id, "mlflow.sharedViewState.kd-vs-golden", json.dumps(state))
kd = client.search_runs([exp.experiment_id], "tags.`sciqa.step` = 'train_prefix' and tags.`sciqa.teacher` = 'true'")
print(exp.experiment_id, kd[0].info.run_id)
PY
)
read -r EXP_ID KD_RUN <<<"$EXP_ID"

URL="$URI/#/experiments/$EXP_ID/runs?compareRunsMode=CHART&viewStateShareKey=kd-vs-golden"
echo "view: $URL"
chromium --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
    --disable-sync --no-first-run --disable-quic --user-data-dir="$WORK/chromium" --window-size=1920,1080 \
    --virtual-time-budget=60000 --screenshot="$WORK/shot.png" "$URL" 2>/dev/null
# a 256-colour palette keeps the PNG small (UI colours only)
python -c "import sys; from PIL import Image; Image.open(sys.argv[1]).convert('RGB').quantize(256).save(sys.argv[2], optimize=True)" \
    "$WORK/shot.png" "$OUT"
chromium --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
    --disable-sync --no-first-run --disable-quic --user-data-dir="$WORK/chromium" --window-size=1920,1400 \
    --virtual-time-budget=60000 --screenshot="$WORK/run.png" "$URI/#/experiments/$EXP_ID/runs/$KD_RUN" 2>/dev/null
python -c "import sys; from PIL import Image; Image.open(sys.argv[1]).convert('RGB').quantize(256).save(sys.argv[2], optimize=True)" \
    "$WORK/run.png" "$RUN_PAGE"
ls -l "$OUT" "$RUN_PAGE"
