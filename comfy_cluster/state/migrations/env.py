"""Alembic's environment for the gateway's store: migrations run on the connection the
store hands over (``config.attributes["connection"]``), inside its transaction."""

from __future__ import annotations

from alembic import context

from comfy_cluster.state.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True, version_table="cc_alembic_version")
with context.begin_transaction():
    context.run_migrations()
