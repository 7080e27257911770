"""room for secrets sealed at rest (the SMTP password, webhook signing secrets)

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("system_settings") as batch:
        batch.alter_column("smtp_password", type_=sa.String(1024), existing_type=sa.String(255))
    with op.batch_alter_table("user_preferences") as batch:
        batch.alter_column("webhook_secret", type_=sa.String(1024), existing_type=sa.String(255))


def downgrade() -> None:
    with op.batch_alter_table("user_preferences") as batch:
        batch.alter_column("webhook_secret", type_=sa.String(255), existing_type=sa.String(1024))
    with op.batch_alter_table("system_settings") as batch:
        batch.alter_column("smtp_password", type_=sa.String(255), existing_type=sa.String(1024))
