"""Create Optuna's tables in a fresh storage database, once, before any sweep worker starts.

Why: workers started together on an empty PostgreSQL database would each create the schema
and race (PostgreSQL answers one of them with "duplicate key value violates unique constraint
pg_type_typname_nsp_index"). docker/compose.yaml runs this as the one-shot `optuna-init`
service that the workers wait for; on a database that has the tables it only checks them.

The URL comes from $CMCR_SWEEP_STORAGE (the sweep's own --storage default), not from the command
line: it holds the password, and `ps` shows every command line to every local user.

    CMCR_SWEEP_STORAGE=postgresql+psycopg2://user:password@host:5432/optuna \
        python docker/init_optuna.py

A URL without a password may still be given as the one argument (it beats the variable).
"""

from __future__ import annotations

import os
import sys
import time

STORAGE_ENV = "CMCR_SWEEP_STORAGE"  # = cmcr.names.STORAGE_ENV (tests/test_docker.py checks)


def init_storage(url: str, attempts: int = 10, wait_s: float = 3.0) -> None:
    """Create (or verify) the schema, retrying while the database is still starting."""
    import optuna
    import sqlalchemy.exc

    for attempt in range(1, attempts + 1):
        try:
            optuna.storages.RDBStorage(url).engine.dispose()
            return
        except sqlalchemy.exc.OperationalError:
            if attempt == attempts:
                raise
            time.sleep(wait_s)


def main(argv: list[str] | None = None) -> int:
    """Entry point: the storage URL, the one argument if given (a URL without a password), else
    $CMCR_SWEEP_STORAGE (never printed: it holds the password)."""
    args = sys.argv[1:] if argv is None else argv
    url = args[0] if len(args) == 1 else os.environ.get(STORAGE_ENV, "")
    if len(args) > 1 or not url:
        print(
            f"usage: {STORAGE_ENV}=URL python docker/init_optuna.py  (or one argument: a URL "
            "without a password)",
            file=sys.stderr,
        )
        return 2
    init_storage(url)
    print("optuna storage ready")
    return 0


if __name__ == "__main__":
    sys.exit(main())
