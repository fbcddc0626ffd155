"""The gateway's tables (SQLAlchemy Core). Changed only through a new migration in
``migrations/versions`` (each one written by hand, for SQLite and PostgreSQL alike).

JSON documents are stored as text (the same on both databases); times are Unix seconds.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Float, Index, Integer, LargeBinary, MetaData, String, Table, Text

__all__ = ["metadata", "blob_chunks", "frames", "meta", "prompts", "prompt_inputs", "attempts", "history", "files", "uploads", "blobs", "settings", "userdata", "leases", "replicas", "sessions", "told"]

metadata = MetaData()

#: Small facts of the service (for instance the websocket clientId its pool uses).
meta = Table("cc_meta", metadata, Column("key", String(100), primary_key=True), Column("value", Text, nullable=False))

#: Every prompt posted: what it is, for whom, and where it stands.
prompts = Table(
    "cc_prompts", metadata,
    Column("prompt_id", String(200), primary_key=True),
    Column("number", Float, nullable=False),
    Column("owner", String(200), nullable=True),  # the authenticated user (None: no users)
    Column("client_id", String(200), nullable=False),
    Column("body", Text, nullable=False),  # JSON: prompt, extra_data, outputs, workflow
    Column("state", String(20), nullable=False),  # waiting, submitted, running, done
    Column("replica", String(100), nullable=True),  # the replica that follows it
    Column("cancel", Boolean, nullable=False, default=False),
    Column("created", Float, nullable=False),
    Column("started", Float, nullable=True),
    Column("updated", Float, nullable=False),
)
Index("cc_prompts_state", prompts.c.state)
Index("cc_prompts_replica", prompts.c.replica)
Index("cc_prompts_client", prompts.c.client_id)

#: The uploads a prompt was bound to when posted (node id -> the upload's content).
prompt_inputs = Table(
    "cc_prompt_inputs", metadata,
    Column("prompt_id", String(200), primary_key=True),
    Column("node", String(200), primary_key=True),
    Column("digest", String(64), nullable=False),
    Column("name", String(255), nullable=False),
)

#: The attempt ledger: each copy of a prompt sent to a server, reserved before its POST,
#: ended once its end there is confirmed.
attempts = Table(
    "cc_attempts", metadata,
    Column("attempt_id", String(200), primary_key=True),  # the prompt_id on the server
    Column("prompt_id", String(200), nullable=False),
    Column("server", String(200), nullable=False),
    Column("phase", String(20), nullable=False),  # reserved, ended
    Column("replica", String(100), nullable=True),
    Column("created", Float, nullable=False),
)
Index("cc_attempts_prompt", attempts.c.prompt_id)

#: Finished prompts, in the shape of ComfyUI's /history items.
history = Table(
    "cc_history", metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("prompt_id", String(200), nullable=False, unique=True),
    Column("owner", String(200), nullable=True),
    Column("client_id", String(200), nullable=False),
    Column("status", String(20), nullable=False),  # succeeded, failed, cancelled
    Column("item", Text, nullable=False),
    Column("created", Float, nullable=False),
    Column("started", Float, nullable=True),
    Column("ended", Float, nullable=False),
)

#: Which server made each output file (for /view on any replica).
files = Table(
    "cc_files", metadata,
    Column("type", String(20), primary_key=True),
    Column("subfolder", String(500), primary_key=True),
    Column("filename", String(255), primary_key=True),
    Column("server", String(200), nullable=False),
    Column("prompt_id", String(200), nullable=False),
)
Index("cc_files_prompt", files.c.prompt_id)

#: The upload index: the current file under each name.
uploads = Table(
    "cc_uploads", metadata,
    Column("type", String(20), primary_key=True),
    Column("subfolder", String(500), primary_key=True),
    Column("name", String(255), primary_key=True),
    Column("digest", String(64), nullable=False),
    Column("size", Integer, nullable=False),
    Column("created", Float, nullable=False),
)

#: Upload bytes, by content (every replica reads them from here).
blobs = Table(
    "cc_blobs", metadata,
    Column("digest", String(64), primary_key=True),
    Column("size", Integer, nullable=False),
    Column("data", LargeBinary, nullable=False),
)

#: Upload bytes, by content, in chunks of at most 1 MiB (``cc_blobs`` holds each upload's
#: size; its ``data`` is empty for a chunked upload).
blob_chunks = Table(
    "cc_blob_chunks", metadata,
    Column("digest", String(64), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("data", LargeBinary, nullable=False),
)

#: Each user's ComfyUI settings (one JSON object).
settings = Table("cc_settings", metadata, Column("user", String(200), primary_key=True), Column("value", Text, nullable=False))

#: Each user's userdata files (workflows, templates) by relative path.
userdata = Table(
    "cc_userdata", metadata,
    Column("user", String(200), primary_key=True),
    Column("path", String(1000), primary_key=True),
    Column("data", LargeBinary, nullable=False),
    Column("modified", Float, nullable=False),
)

#: Which replica dispatches to each backend server, until when.
leases = Table(
    "cc_leases", metadata,
    Column("server", String(200), primary_key=True),
    Column("replica", String(100), nullable=False),
    Column("expires", Float, nullable=False),
)

#: Live replicas (a heartbeat each): a replica whose heartbeat is old is dead.
replicas = Table(
    "cc_replicas", metadata,
    Column("replica", String(100), primary_key=True),
    Column("url", String(500), nullable=False),
    Column("heartbeat", Float, nullable=False),
)

#: Client frames too large for a NOTIFY payload, read by the replica that holds the socket.
frames = Table(
    "cc_frames", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("client_id", String(200), nullable=False),
    Column("frame", Text, nullable=False),
    Column("created", Float, nullable=False),
)

#: Web UI sign-in sessions, by the SHA-256 of the session id (never the id itself).
sessions = Table(
    "cc_sessions", metadata,
    Column("key", String(64), primary_key=True),
    Column("user", String(200), nullable=False),
    Column("proof", String(128), nullable=False),  # the fingerprint of the credential used
    Column("admin", Boolean, nullable=False),
    Column("expires", Float, nullable=False),
)
Index("cc_sessions_expires", sessions.c.expires)

#: Replicas: a prompt's end written to a client's socket (by the replica holding it), so that
#: no replica sends that client the copy it kept (the client may reconnect anywhere).
told = Table(
    "cc_told", metadata,
    Column("user", String(200), primary_key=True),
    Column("client_id", String(200), primary_key=True),
    Column("prompt_id", String(200), primary_key=True),
    Column("created", Float, nullable=False),
)
Index("cc_told_created", told.c.created)
