"""cmcr.engine: the Accelerate pre-training loop, checkpoints, downstream.

Entry points: ``cmcr.engine.pipeline.run_pretrain`` / ``run_trial`` / ``run_downstream``;
checkpoints and weights: ``cmcr.engine.checkpoint``; tracking: ``cmcr.tracking.runs.RunLogger``.
Submodules are imported on use (torch, mlflow and accelerate are slow to import).
"""
