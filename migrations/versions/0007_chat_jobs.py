"""chat jobs: a job's output cap (the largest an item of a chat job may ask)

Reviewed by hand. One nullable column: existing jobs keep NULL (their cap follows from the task).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 09:50:00
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

revision: str = '0007'
down_revision: Union[str, None] = '0006'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('job') as batch:
        batch.add_column(sa.Column('max_output_tokens', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('job') as batch:
        batch.drop_column('max_output_tokens')
