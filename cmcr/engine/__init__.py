"""cmcr.engine: the Accelerate pre-training loop, checkpoints, MLflow tracking, downstream.

Entry points: ``cmcr.engine.pipeline.run_pretrain`` / ``run_trial`` / ``run_downstream``;
checkpoints and weights: ``cmcr.engine.checkpoint``; tracking: ``cmcr.engine.tracking.RunLogger``.
Submodules are imported on use (torch, mlflow and accelerate are slow to import).
"""
