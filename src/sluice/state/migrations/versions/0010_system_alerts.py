"""SYSTEM alert records: the server about itself, without a definition, and cleared when the
condition ends

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("alerts") as batch:
        batch.alter_column("definition_id", existing_type=sa.Integer, nullable=True)
        batch.add_column(sa.Column("type", sa.String(12), nullable=False, server_default="ANALYTICAL"))
        batch.add_column(sa.Column("cleared_us", sa.BigInteger, nullable=True))


def downgrade() -> None:
    op.execute("DELETE FROM alerts WHERE definition_id IS NULL")
    with op.batch_alter_table("alerts") as batch:
        batch.drop_column("cleared_us")
        batch.drop_column("type")
        batch.alter_column("definition_id", existing_type=sa.Integer, nullable=False)
