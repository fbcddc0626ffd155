"""The statements of one write sent together: one round trip to PostgreSQL.

On PostgreSQL every statement is a round trip to the server (about 0.2 ms on one machine,
more across a network), and psycopg opens a transaction with one more (``BEGIN``). A job's
end is seven statements (and one per output file past the first): through SQLAlchemy, eight
round trips before its ``COMMIT``. The writes on every job's path send their statements in
psycopg's pipeline mode instead: all of them, ``BEGIN`` included, in one round trip, their
results read after it.

SQLite is a library in this process: there is no round trip to save, and its statements
run one by one as they are sent (each result known at once), through the driver's own cursor.
So do PostgreSQL's where psycopg's libpq is older than 14 (no pipeline mode).

A write that may find it must not write (a replica that no longer holds the prompt) opens
the pipeline with ``fence=True``: on PostgreSQL its statements are sent behind a savepoint,
and :meth:`Pipeline.undo` rolls them back when the first result says so; on SQLite the
write checks that result before sending the rest (:attr:`Sent.known`), as it does on
PostgreSQL without pipeline mode.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

__all__ = ["Pipeline", "Sent"]

#: Compiled SQL per (statement, dialect, columns): compiled once, like the statements.
_COMPILED: Dict[Tuple[int, str, Tuple[str, ...]], Any] = {}

_SAVEPOINT = "SAVEPOINT cc_write"
_UNDO = "ROLLBACK TO SAVEPOINT cc_write"


def _compiled(stmt: Any, conn: Connection, columns: Tuple[str, ...]) -> Any:
    key = (id(stmt), conn.dialect.name, columns)
    compiled = _COMPILED.get(key)
    if compiled is None:
        compiled = stmt.compile(dialect=conn.dialect, column_keys=list(columns) or None)
        # Keyed by id(): the statements are module constants, never freed, so an id is
        # never reused for another statement.
        _COMPILED[key] = compiled
    return compiled


def _pipeline_supported() -> bool:
    import psycopg  # only PostgreSQL states get here, and they need psycopg

    return bool(psycopg.Pipeline.is_supported())


class Sent:
    """One statement's result: at once on SQLite (:attr:`known`), after the pipeline's
    round trip on PostgreSQL."""

    __slots__ = ("_rows", "_cursor")

    def __init__(self, rows: Optional[List[Sequence[Any]]] = None, cursor: Any = None) -> None:
        self._rows = rows
        self._cursor = cursor

    @property
    def known(self) -> bool:
        """Whether the result can be read now (before the pipeline ends)."""
        return self._rows is not None

    def rows(self) -> List[Sequence[Any]]:
        if self._rows is None:
            cursor = self._cursor
            self._rows = list(cursor.fetchall()) if cursor.description is not None else []
        return self._rows

    def first(self) -> Optional[Sequence[Any]]:
        rows = self.rows()
        return rows[0] if rows else None

    def scalar(self) -> Any:
        row = self.first()
        return row[0] if row is not None else None

    def scalars(self) -> List[Any]:
        return [r[0] for r in self.rows()]


class Pipeline:
    """``with Pipeline(conn) as send:`` ... ``send(statement, values)`` -> :class:`Sent`;
    the results are all known once the block has ended (see the module docstring)."""

    def __init__(self, conn: Connection, *, fence: bool = False) -> None:
        self._conn = conn
        self._raw: Any = conn.connection.driver_connection
        self._pg = conn.dialect.name == "postgresql"
        # Pipeline mode needs libpq 14 or newer (psycopg's binary wheels bundle one); with an
        # older system libpq the statements go one by one, each result known at once.
        self._pipelined = self._pg and _pipeline_supported()
        self._fence = fence
        self._pipe: Any = None

    def __enter__(self) -> "Pipeline":
        if self._pipelined:
            self._pipe = self._raw.pipeline()
            self._pipe.__enter__()
            if self._fence:
                self._raw.execute(_SAVEPOINT)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._pipe is not None:
            pipe, self._pipe = self._pipe, None
            try:
                pipe.__exit__(*exc)  # the round trip: every result is in
            except Exception as error:  # noqa: BLE001 - raised as SQLAlchemy would
                raise self._as_sqlalchemy(error) from None

    def _as_sqlalchemy(self, error: Exception) -> Exception:
        """``error`` of the driver as SQLAlchemy raises it (IntegrityError, OperationalError,
        ...), the connection invalidated if it is lost: callers tell those apart (a
        prompt_id posted twice, a busy SQLite file, a write tried again on a fresh
        connection)."""
        dialect = self._conn.dialect
        dbapi = dialect.loaded_dbapi
        if not isinstance(error, dbapi.Error):
            return error
        lost = dialect.is_disconnect(error, self._raw, None)
        if lost:
            self._conn.invalidate(error)
        return DBAPIError.instance(None, None, error, dbapi.Error, connection_invalidated=lost, dialect=dialect)

    def __call__(self, stmt: Any, values: Dict[str, Any], *, columns: Sequence[str] = ()) -> Sent:
        """Send ``stmt`` with ``values`` (``columns``: an INSERT's columns, when ``stmt``
        names none)."""
        # The driver's own cursor with SQL compiled once: SQLAlchemy's execution (keying,
        # parameter processing, result metadata) costs more than SQLite's work here.
        compiled = _compiled(stmt, self._conn, tuple(columns))
        params = compiled.construct_params(values)
        cursor = self._raw.cursor()
        try:
            if self._pg:
                cursor.execute(compiled.string, params)
                if self._pipelined:
                    return Sent(cursor=cursor)  # read after the round trip
            else:
                cursor.execute(compiled.string, [params[name] for name in compiled.positiontup])
            # Read at once: an SQLite statement with rows left unread stays open.
            return Sent(rows=cursor.fetchall() if cursor.description is not None else [])
        except Exception as error:  # noqa: BLE001 - raised as SQLAlchemy would
            raise self._as_sqlalchemy(error) from None

    def undo(self) -> None:
        """After the block: roll back what this pipeline wrote (``fence=True`` on
        PostgreSQL; on SQLite the write sent nothing but its check)."""
        if self._pipelined and self._fence:
            try:
                self._raw.execute(_UNDO)
            except Exception as error:  # noqa: BLE001 - raised as SQLAlchemy would
                raise self._as_sqlalchemy(error) from None
