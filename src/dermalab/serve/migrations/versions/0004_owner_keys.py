"""Every analysis and spot references its owner (``users.id``, a foreign key), so an upload
that races its owner's deletion fails instead of leaving a row owned by nobody.

Rows whose owner no longer exists (left by that race before this revision) are deleted first;
their photos are then unreferenced and go with the start-up sweep. Rows without an owner
(``--open`` mode, or written before accounts) stay: the key allows NULL.

Revision ID: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TABLES = ("analyses", "spots")


def upgrade() -> None:
    conn = op.get_bind()
    users = sa.table("users", sa.column("id", sa.String))
    for name in TABLES:
        table = sa.table(name, sa.column("owner_id", sa.String))
        conn.execute(sa.delete(table).where(table.c.owner_id.is_not(None),
                                            table.c.owner_id.not_in(sa.select(users.c.id))))
        with op.batch_alter_table(name) as batch:
            batch.create_foreign_key(f"fk_{name}_owner_id_users", "users", ["owner_id"], ["id"])


def downgrade() -> None:
    for name in TABLES:
        with op.batch_alter_table(name) as batch:
            batch.drop_constraint(f"fk_{name}_owner_id_users", type_="foreignkey")
