"""Opening the store's database: the engine (SQLite tuned for one writer process, PostgreSQL
through psycopg 3) and the schema brought to the newest migration (Alembic), under a lock so
replicas starting together migrate once."""

from __future__ import annotations

import logging
import os
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .urls import StateURLError, engine_url, safe_url

__all__ = ["make_engine", "migrate", "HEAD"]

log = logging.getLogger(__name__)

#: The newest migration this code knows.
HEAD = "0004"
_LOCK_KEY = 0x63637374  # 'ccst': the advisory lock PostgreSQL replicas migrate under


def make_engine(url: str, *, ping: bool = True) -> Engine:
    """An engine for a state URL (the SQLite file's folder is created). ``ping``
    (PostgreSQL): test each connection taken from the pool with a round trip first (the
    group commit does without: it tries a write again on a fresh connection instead)."""
    target = engine_url(url)
    if target.startswith("sqlite"):
        path = target[len("sqlite+pysqlite:///"):]
        folder = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            raise StateURLError(f"state: cannot create the folder {folder}: {exc.strerror}") from None
        engine = sa.create_engine(target, connect_args={"check_same_thread": False, "timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _tune(dbapi_conn: Any, _record: Any) -> None:
            # WAL: readers never wait for the writer; a killed process loses no committed row.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    try:
        import psycopg  # noqa: F401 - the driver must be there; a clear message if not
    except ImportError:
        raise StateURLError("state: PostgreSQL needs psycopg 3: pip install 'comfy-cluster[gateway]'") from None
    return sa.create_engine(target, pool_size=10, max_overflow=20, pool_pre_ping=ping)


def migrate(engine: Engine) -> None:
    """Bring the schema to :data:`HEAD` (new databases are created; older ones upgraded).
    A database newer than this code is refused with a one-line error."""
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext

    config = Config()
    config.set_main_option("script_location", "comfy_cluster.state:migrations")
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
        current = MigrationContext.configure(conn, opts={"version_table": "cc_alembic_version"}).get_current_revision()
        if current is not None and current > HEAD:
            raise StateURLError(f"state: {safe_url(str(engine.url))} has schema {current}, newer than this comfy-cluster ({HEAD}): upgrade comfy-cluster")
        if current != HEAD:
            log.info("state: migrating the schema from %s to %s", current or "nothing", HEAD)
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
