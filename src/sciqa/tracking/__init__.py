"""MLflow tracking: step runs (``runs``), the store, run locks, artifacts."""
import os


def claim_mlflow_run() -> str | None:
    """``MLFLOW_RUN_ID`` out of the environment: MLflow would also open it for nested runs (mlflow#15713)."""
    return os.environ.pop("MLFLOW_RUN_ID", "") or None
