"""Create Optuna's tables in a fresh storage database, once, before any sweep worker starts.

Why: workers started together on an empty PostgreSQL database would each create the schema
and race (PostgreSQL answers one of them with "duplicate key value violates unique constraint
pg_type_typname_nsp_index"). docker/compose.yaml runs this as the one-shot `optuna-init`
service that the workers wait for; on a database that has the tables it only checks them.

    python docker/init_optuna.py postgresql+psycopg2://user:password@host:5432/optuna
"""

from __future__ import annotations

import sys
import time


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
    """Entry point: one argument, the storage URL (never printed: it holds the password)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python docker/init_optuna.py STORAGE_URL", file=sys.stderr)
        return 2
    init_storage(args[0])
    print("optuna storage ready")
    return 0


if __name__ == "__main__":
    sys.exit(main())
