"""sciqa: MLflow-tracked ScienceQA experiments (benchmark, prefix/LoRA adapters, KD vs golden)."""
