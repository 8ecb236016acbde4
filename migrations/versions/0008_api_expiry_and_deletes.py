"""the /v1 intake: a batch's expired_at (its 24h window closed), a file's deleted_at (DELETE /v1/files)

Reviewed by hand. Two nullable columns added: nothing existing changes.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 10:00:00
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

revision: str = '0008'
down_revision: Union[str, None] = '0007'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column('api_batch', sa.Column('expired_at', TS, nullable=True))
    op.add_column('api_file', sa.Column('deleted_at', TS, nullable=True))


def downgrade() -> None:
    op.drop_column('api_file', 'deleted_at')
    op.drop_column('api_batch', 'expired_at')
