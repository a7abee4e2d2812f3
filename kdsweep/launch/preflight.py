"""Before a job is submitted: the spec's stores can be shared, and (unless --dry-run) they answer.

A dry run checks the URL schemes only: the cluster may reach hosts this machine cannot.
"""

from __future__ import annotations

from kdsweep.errors import LaunchError, TrackingError
from kdsweep.launch.credentials import PG_PASSWORD, Stores


def scheme_problems(storage: str, tracking_uri: str) -> list[str]:
    from kdsweep.study.probes import shared_store_problem

    return [p for p in (shared_store_problem("storage", storage),
                        shared_store_problem("tracking_uri", tracking_uri)) if p]


def check_answer(stores: Stores, env: dict[str, str], *, timeout: int = 10) -> None:
    """Connect to PostgreSQL and ask the MLflow server's /health, as a worker will first do.

    ``env`` holds the passwords the job will have (from the URLs, --env-file or this environment).
    """
    import sqlalchemy

    from kdsweep.tracking.logger import check_reachable

    connect_args: dict = {"connect_timeout": timeout}
    if env.get(PG_PASSWORD):
        connect_args["password"] = env[PG_PASSWORD]
    engine = sqlalchemy.create_engine(stores.storage, poolclass=sqlalchemy.pool.NullPool, connect_args=connect_args)
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
    except sqlalchemy.exc.SQLAlchemyError as exc:
        first = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LaunchError(f"storage={stores.storage!r}: PostgreSQL does not answer ({first})") from None
    finally:
        engine.dispose()
    try:
        check_reachable(stores.tracking_uri, timeout=timeout)
    except TrackingError as exc:  # keep its one line, say it is the pre-submit check
        raise LaunchError(f"{exc} (checked before submitting)") from None
