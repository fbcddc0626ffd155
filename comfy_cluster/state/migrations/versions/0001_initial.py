"""The first schema: prompts, their bound uploads, the attempt ledger, history, output files,
uploads and their bytes, users' settings and userdata, leases and replicas.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("cc_meta", sa.Column("key", sa.String(100), primary_key=True), sa.Column("value", sa.Text, nullable=False))
    op.create_table(
        "cc_prompts",
        sa.Column("prompt_id", sa.String(200), primary_key=True),
        sa.Column("number", sa.Float, nullable=False),
        sa.Column("owner", sa.String(200), nullable=True),
        sa.Column("client_id", sa.String(200), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("replica", sa.String(100), nullable=True),
        sa.Column("cancel", sa.Boolean, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("started", sa.Float, nullable=True),
        sa.Column("updated", sa.Float, nullable=False),
    )
    op.create_index("cc_prompts_state", "cc_prompts", ["state"])
    op.create_table(
        "cc_prompt_inputs",
        sa.Column("prompt_id", sa.String(200), primary_key=True),
        sa.Column("node", sa.String(200), primary_key=True),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
    )
    op.create_table(
        "cc_attempts",
        sa.Column("attempt_id", sa.String(200), primary_key=True),
        sa.Column("prompt_id", sa.String(200), nullable=False),
        sa.Column("server", sa.String(200), nullable=False),
        sa.Column("phase", sa.String(20), nullable=False),
        sa.Column("replica", sa.String(100), nullable=True),
        sa.Column("created", sa.Float, nullable=False),
    )
    op.create_index("cc_attempts_prompt", "cc_attempts", ["prompt_id"])
    op.create_table(
        "cc_history",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("prompt_id", sa.String(200), nullable=False, unique=True),
        sa.Column("owner", sa.String(200), nullable=True),
        sa.Column("client_id", sa.String(200), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("item", sa.Text, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("started", sa.Float, nullable=True),
        sa.Column("ended", sa.Float, nullable=False),
    )
    op.create_table(
        "cc_files",
        sa.Column("type", sa.String(20), primary_key=True),
        sa.Column("subfolder", sa.String(500), primary_key=True),
        sa.Column("filename", sa.String(255), primary_key=True),
        sa.Column("server", sa.String(200), nullable=False),
        sa.Column("prompt_id", sa.String(200), nullable=False),
    )
    op.create_index("cc_files_prompt", "cc_files", ["prompt_id"])
    op.create_table(
        "cc_uploads",
        sa.Column("type", sa.String(20), primary_key=True),
        sa.Column("subfolder", sa.String(500), primary_key=True),
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
    )
    op.create_table(
        "cc_blobs",
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )
    op.create_table("cc_settings", sa.Column("user", sa.String(200), primary_key=True), sa.Column("value", sa.Text, nullable=False))
    op.create_table(
        "cc_userdata",
        sa.Column("user", sa.String(200), primary_key=True),
        sa.Column("path", sa.String(1000), primary_key=True),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("modified", sa.Float, nullable=False),
    )
    op.create_table(
        "cc_leases",
        sa.Column("server", sa.String(200), primary_key=True),
        sa.Column("replica", sa.String(100), nullable=False),
        sa.Column("expires", sa.Float, nullable=False),
    )
    op.create_table(
        "cc_replicas",
        sa.Column("replica", sa.String(100), primary_key=True),
        sa.Column("url", sa.String(500), nullable=False),
        sa.Column("heartbeat", sa.Float, nullable=False),
    )


def downgrade() -> None:
    for name in ("cc_replicas", "cc_leases", "cc_userdata", "cc_settings", "cc_blobs", "cc_uploads", "cc_files",
                 "cc_history", "cc_attempts", "cc_prompt_inputs", "cc_prompts", "cc_meta"):
        op.drop_table(name)
