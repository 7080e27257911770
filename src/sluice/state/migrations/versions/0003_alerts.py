"""alert definitions and alert records

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alert_definitions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("prefilter", sa.Text, nullable=False, server_default=""),
        sa.Column("metric", sa.String(32), nullable=False),
        sa.Column("entity", sa.String(16), nullable=False),
        sa.Column("threshold", sa.BigInteger, nullable=False),
        sa.Column("interval", sa.String(8), nullable=False),
        sa.Column("severity", sa.String(10), nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("exceptions", sa.Text, nullable=False, server_default="{}"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "definition_id", sa.Integer, sa.ForeignKey("alert_definitions.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("entity_type", sa.String(16), nullable=False),
        sa.Column("entity", sa.String(200), nullable=False),
        sa.Column("severity", sa.String(10), nullable=False),
        sa.Column("message", sa.String(400), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("count", sa.BigInteger, nullable=False),
        sa.Column("threshold", sa.BigInteger, nullable=False),
        sa.Column("value", sa.BigInteger, nullable=False),
        sa.Column("first_trigger_us", sa.BigInteger, nullable=False),
        sa.Column("last_trigger_us", sa.BigInteger, nullable=False),
        sa.Column("acknowledged_us", sa.BigInteger, nullable=True),
        sa.Column("acknowledged_by", sa.String(64), nullable=True),
        sa.UniqueConstraint("definition_id", "entity"),
    )
    op.create_index("ix_alerts_user_last", "alerts", ["user_id", "last_trigger_us"])


def downgrade() -> None:
    op.drop_index("ix_alerts_user_last", "alerts")
    op.drop_table("alerts")
    op.drop_table("alert_definitions")
