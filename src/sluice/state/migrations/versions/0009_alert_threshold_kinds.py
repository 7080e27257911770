"""alert definitions: thresholds per second (short windows against floods), lower
thresholds over a watched list of entities, and baselines (K times an entity's usual value)

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("alert_definitions") as batch:
        batch.add_column(sa.Column("per_second", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("threshold_type", sa.String(8), nullable=False, server_default="upper"))
        batch.add_column(sa.Column("watch", sa.Text, nullable=False, server_default="[]"))  # JSON
        batch.add_column(sa.Column("min_volume", sa.BigInteger, nullable=False, server_default="0"))
        batch.add_column(sa.Column("baseline_days", sa.Integer, nullable=False, server_default="7"))


def downgrade() -> None:
    with op.batch_alter_table("alert_definitions") as batch:
        batch.drop_column("baseline_days")
        batch.drop_column("min_volume")
        batch.drop_column("watch")
        batch.drop_column("threshold_type")
        batch.drop_column("per_second")
