"""Optuna sweeps over the CMCR config: study definitions, the objective, storage, resume.

``python sweeps/run.py`` (or ``python -m cmcr.sweep``) is the command; ``cmcr.sweep.cli``
parses it and ``cmcr.sweep.runner`` does the work.
"""

from cmcr.sweep.space import StudyError, StudySpec, builtin_studies, load_study, parse_study

__all__ = ["StudyError", "StudySpec", "builtin_studies", "load_study", "parse_study"]
