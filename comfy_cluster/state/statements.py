"""The statements on every job's path, built once with bound parameters.

SQLAlchemy compiles a statement once per shape and caches it, but a statement built anew
for each call is still constructed and keyed each time (about 0.1 ms per statement here,
as much as SQLite takes to run it). These are built once, at import, and executed with a
dictionary of values.
"""

from __future__ import annotations

from typing import Any, Dict

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from . import schema as t

__all__ = ["INSERT_PROMPT", "INSERT_PROMPT_TAKE", "PROMPT_COLUMNS", "INSERT_INPUT", "INPUT_COLUMNS", "RESERVE", "RESERVE_LOCKED", "END_ATTEMPT", "SET_STATE", "SET_STATE_STARTED", "TAKE_OUT",
           "DELETE_HISTORY_ITEM", "INSERT_HISTORY", "HISTORY_COLUMNS", "FILE_COLUMNS", "DELETE_INPUTS", "DELETE_ATTEMPTS", "HISTORY_CUT", "UPSERT_FILE"]

#: The columns a posted prompt is given (and ``replica`` in :data:`INSERT_PROMPT`).
PROMPT_COLUMNS = ("prompt_id", "number", "owner", "client_id", "body", "state", "cancel", "created", "updated")
#: A posted prompt; ``replica`` as a value.
INSERT_PROMPT = t.prompts.insert().returning(t.prompts.c.replica)
#: A posted prompt held by replica ``holder`` unless a prompt waits for a replica (those go first:
#: then it waits with them, held by none).
_WAITING = sa.exists().where(sa.and_(t.prompts.c.replica.is_(None), t.prompts.c.state == "waiting"))
INSERT_PROMPT_TAKE = t.prompts.insert().values(
    replica=sa.case((_WAITING, sa.null()), else_=sa.bindparam("holder", type_=sa.String))).returning(t.prompts.c.replica)
#: An upload a posted prompt is bound to.
INSERT_INPUT = t.prompt_inputs.insert()
INPUT_COLUMNS = ("prompt_id", "node", "digest", "name")

_p = t.prompts.c
#: The row of prompt ``pid`` while replica ``replica`` (None: no replica) holds it.
_HELD = sa.and_(_p.prompt_id == sa.bindparam("pid"), _p.replica.is_not_distinct_from(sa.bindparam("replica", type_=sa.String)))

_RESERVE_FROM = sa.select(_p.prompt_id, sa.bindparam("attempt_id", type_=sa.String), sa.bindparam("server", type_=sa.String),
                          sa.literal("reserved"), sa.bindparam("replica", type_=sa.String), sa.bindparam("created", type_=sa.Float)).where(_HELD)
_RESERVE_COLS = ["prompt_id", "attempt_id", "server", "phase", "replica", "created"]
#: An attempt recorded only while its prompt is held (returns its id, or nothing: fenced).
RESERVE = t.attempts.insert().from_select(_RESERVE_COLS, _RESERVE_FROM).returning(t.attempts.c.attempt_id)
#: The same, the prompt's row locked until the commit (PostgreSQL: a take-over waits).
RESERVE_LOCKED = t.attempts.insert().from_select(_RESERVE_COLS, _RESERVE_FROM.with_for_update()).returning(t.attempts.c.attempt_id)

END_ATTEMPT = t.attempts.update().where(t.attempts.c.attempt_id == sa.bindparam("aid")).values(phase="ended")
SET_STATE = t.prompts.update().where(_p.prompt_id == sa.bindparam("pid")).values(
    state=sa.bindparam("state"), updated=sa.bindparam("now"))
SET_STATE_STARTED = t.prompts.update().where(_p.prompt_id == sa.bindparam("pid")).values(
    state=sa.bindparam("state"), updated=sa.bindparam("now"), started=sa.bindparam("started"))

#: A finished prompt out of the queue while held (returns its id, or nothing: fenced).
TAKE_OUT = t.prompts.delete().where(_HELD).returning(_p.prompt_id)
DELETE_HISTORY_ITEM = t.history.delete().where(t.history.c.prompt_id == sa.bindparam("pid"))
INSERT_HISTORY = t.history.insert()
#: The columns :data:`INSERT_HISTORY` is given (the seq is the database's).
HISTORY_COLUMNS = ("prompt_id", "owner", "client_id", "status", "item", "created", "started", "ended")
DELETE_INPUTS = t.prompt_inputs.delete().where(t.prompt_inputs.c.prompt_id == sa.bindparam("pid")).returning(t.prompt_inputs.c.digest)
DELETE_ATTEMPTS = t.attempts.delete().where(t.attempts.c.prompt_id == sa.bindparam("pid"))
#: The seq of the newest item past the ``keep`` newest (one walk down the seq index).
HISTORY_CUT = sa.select(t.history.c.seq).order_by(t.history.c.seq.desc()).offset(sa.bindparam("keep", type_=sa.Integer)).limit(1)


def _upsert_file(insert: Any) -> Any:
    stmt = insert(t.files)
    return stmt.on_conflict_do_update(index_elements=["type", "subfolder", "filename"],
                                      set_={"server": stmt.excluded.server, "prompt_id": stmt.excluded.prompt_id})


#: The columns :data:`UPSERT_FILE` is given.
FILE_COLUMNS = ("type", "subfolder", "filename", "server", "prompt_id")
#: Record an output file's server (the later of two writers wins), per dialect.
UPSERT_FILE: Dict[str, Any] = {"postgresql": _upsert_file(pg_insert), "sqlite": _upsert_file(sqlite_insert)}
