"""Ablation bench: study registry, Optuna runner, MLflow trial runs, reports."""
