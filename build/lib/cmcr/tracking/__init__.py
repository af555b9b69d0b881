"""MLflow tracking and the Optuna storage access below engine, results and sweep (floor 5).

``store``: the tracking URI, clients, experiments; ``inputs``: what a run records (the run
spec built once from the config); ``runs``: a run's life (start, resume, end with a reason,
find); ``study``: a sweep's experiment, notes and UI links; ``optuna_store``: the Optuna
storage (SQLite, PostgreSQL, journal) and the study lock. Import the module you need: mlflow
and optuna are imported only when used.
"""
