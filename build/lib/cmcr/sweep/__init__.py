"""Optuna sweeps over the CMCR config: study definitions, the objective, storage, resume.

``python sweeps/run.py`` (or ``python -m cmcr.sweep``) is the command; ``cmcr.sweep.cli``
parses it (options declared once in ``cmcr.sweep.options``), ``cmcr.sweep.runner`` validates,
sets up and summarises the study, and ``cmcr.sweep.worker`` runs the queued trials, in this
process or ``--workers`` spawned ones (``cmcr.sweep.spawn``); ``cmcr.sweep.summary`` writes what
the sweep says; ``cmcr.sweep.slurm`` hands the workers to SLURM (``--launcher slurm``).
"""

from cmcr.errors import StudyError
from cmcr.sweep.space import StudySpec, builtin_studies, load_study, parse_study

__all__ = ["StudyError", "StudySpec", "builtin_studies", "load_study", "parse_study"]
