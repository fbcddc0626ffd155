"""The gateway's state: prompts, the attempt ledger, history, output files, uploads and
users' data, in SQLite (one gateway; the default) or PostgreSQL (replicas).

Needs the gateway extra (SQLAlchemy, Alembic, psycopg 3): ``pip install 'comfy-cluster[gateway]'``.
"""

from __future__ import annotations

from .urls import ENV_STATE, StateURLError, data_dir, default_state_url, is_postgres, safe_url

try:
    from .store import Fenced, FileKey, PromptRow, Store
    from .users import UserData
except ImportError as exc:  # pragma: no cover - depends on the installation
    if exc.name in ("sqlalchemy", "alembic"):
        raise ImportError("the gateway's state needs SQLAlchemy and Alembic: pip install 'comfy-cluster[gateway]'") from exc
    raise

__all__ = ["Store", "Fenced", "PromptRow", "FileKey", "UserData", "ENV_STATE", "StateURLError", "data_dir", "default_state_url", "is_postgres", "safe_url"]
