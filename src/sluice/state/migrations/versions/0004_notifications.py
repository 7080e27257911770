"""notification outbox, dashboard stream, re-notify and webhook settings

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notifications",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("alert_id", sa.Integer, sa.ForeignKey("alerts.id", ondelete="SET NULL"), nullable=True),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("change", sa.String(16), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.Column("next_attempt_us", sa.BigInteger, nullable=False),
        sa.Column("delivered_us", sa.BigInteger, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
    )
    op.create_index("ix_notifications_due", "notifications", ["channel", "state", "next_attempt_us"])
    op.create_table(
        "alert_stream",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("alert_id", sa.Integer, nullable=True),
        sa.Column("change", sa.String(16), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_alert_stream_user", "alert_stream", ["user_id", "id"])
    with op.batch_alter_table("alerts") as batch:
        batch.add_column(sa.Column("last_notified_us", sa.BigInteger, nullable=True))
    with op.batch_alter_table("alert_definitions") as batch:
        batch.add_column(sa.Column("renotify_s", sa.Integer, nullable=True))
    with op.batch_alter_table("user_preferences") as batch:
        batch.add_column(sa.Column("email_digest", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("webhook_url", sa.String(1000), nullable=False, server_default=""))
        batch.add_column(sa.Column("webhook_secret", sa.String(255), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("user_preferences") as batch:
        batch.drop_column("webhook_secret")
        batch.drop_column("webhook_url")
        batch.drop_column("email_digest")
    with op.batch_alter_table("alert_definitions") as batch:
        batch.drop_column("renotify_s")
    with op.batch_alter_table("alerts") as batch:
        batch.drop_column("last_notified_us")
    op.drop_index("ix_alert_stream_user", "alert_stream")
    op.drop_table("alert_stream")
    op.drop_index("ix_notifications_due", "notifications")
    op.drop_table("notifications")
