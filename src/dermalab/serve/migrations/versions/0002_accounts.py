"""Accounts: users (or anonymous devices), sessions, an owner per analysis, and photo keys
relative to the image store.

Analyses written before accounts existed get no owner: they stay visible in ``--open`` mode
only, never to a signed-in user. Photo references that were absolute paths (or full
``s3://`` URIs) become their file name, the key inside the store, so a copied run directory
can no longer delete the original's photos.

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("email", sa.String(320), nullable=True, unique=True),
        sa.Column("password_hash", sa.String(255), nullable=True),
        sa.Column("anonymous", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "auth_tokens",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("csrf", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_auth_tokens_user_id", "auth_tokens", ["user_id"])
    op.create_index("ix_auth_tokens_expires_at", "auth_tokens", ["expires_at"])
    with op.batch_alter_table("analyses") as batch:
        batch.add_column(sa.Column("owner_id", sa.String(36), nullable=True))
        batch.create_index("ix_analyses_owner_id", ["owner_id"])
    conn = op.get_bind()
    analyses = sa.table("analyses", sa.column("id", sa.String), sa.column("image_ref", sa.String))
    for row_id, ref in conn.execute(sa.select(analyses.c.id, analyses.c.image_ref)).all():
        key = ref.replace("\\", "/").rsplit("/", 1)[-1]
        if key != ref:
            conn.execute(analyses.update().where(analyses.c.id == row_id).values(image_ref=key))


def downgrade() -> None:
    with op.batch_alter_table("analyses") as batch:
        batch.drop_index("ix_analyses_owner_id")
        batch.drop_column("owner_id")
    op.drop_table("auth_tokens")
    op.drop_table("users")
