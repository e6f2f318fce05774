"""Named spots: a lesion a person photographs again over time ("left shoulder mole"), and the
spot each analysis belongs to (none for analyses made before spots existed).

Revision ID: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "spots",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("owner_id", sa.String(36), nullable=True),
        sa.Column("name", sa.String(120), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_spots_owner_id", "spots", ["owner_id"])
    with op.batch_alter_table("analyses") as batch:
        batch.add_column(sa.Column("spot_id", sa.String(36), nullable=True))
        batch.create_index("ix_analyses_spot_id", ["spot_id"])


def downgrade() -> None:
    with op.batch_alter_table("analyses") as batch:
        batch.drop_index("ix_analyses_spot_id")
        batch.drop_column("spot_id")
    op.drop_index("ix_spots_owner_id", "spots")
    op.drop_table("spots")
