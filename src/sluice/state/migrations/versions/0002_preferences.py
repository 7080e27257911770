"""system settings and per-user preferences

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "system_settings",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("smtp_host", sa.String(255), nullable=False, server_default=""),
        sa.Column("smtp_port", sa.Integer, nullable=False, server_default="25"),
        sa.Column("smtp_security", sa.String(16), nullable=False, server_default="none"),
        sa.Column("smtp_username", sa.String(255), nullable=False, server_default=""),
        sa.Column("smtp_password", sa.String(255), nullable=False, server_default=""),
        sa.Column("smtp_from", sa.String(255), nullable=False, server_default=""),
        sa.Column("retention_days", sa.Float, nullable=True),
    )
    op.create_table(
        "user_preferences",
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("email_to", sa.String(255), nullable=False, server_default=""),
        sa.Column("syslog_host", sa.String(255), nullable=False, server_default=""),
        sa.Column("syslog_port", sa.Integer, nullable=False, server_default="514"),
        sa.Column("syslog_facility", sa.String(16), nullable=False, server_default="local0"),
        sa.Column("syslog_format", sa.String(16), nullable=False, server_default="rfc5424"),
        sa.Column("syslog_transport", sa.String(8), nullable=False, server_default="udp"),
    )


def downgrade() -> None:
    op.drop_table("user_preferences")
    op.drop_table("system_settings")
