"""call finish reasons; rollup counts and cost of answers refused, filtered, blocked or cut off

Reviewed by hand: the rollup columns get server defaults so existing rows migrate (no such answer
was counted before: they read 0); existing calls' finish stays NULL (not recorded then).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 10:00:00
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
import sqlmodel

from router.ledger.types import Money

revision: str = '0004'
down_revision: Union[str, None] = '0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

OUTCOMES = ('refused', 'filtered', 'blocked', 'cut_off')


def upgrade() -> None:
    with op.batch_alter_table('call') as batch:
        batch.add_column(sa.Column('finish', sqlmodel.sql.sqltypes.AutoString(), nullable=True))
    with op.batch_alter_table('call_rollup') as batch:
        for outcome in OUTCOMES:
            batch.add_column(sa.Column(f'{outcome}_calls', sa.Integer(), nullable=False, server_default='0'))
        for outcome in OUTCOMES:
            batch.add_column(sa.Column(f'{outcome}_cost_usd', Money(), nullable=False, server_default='0'))


def downgrade() -> None:
    with op.batch_alter_table('call_rollup') as batch:
        for outcome in OUTCOMES:
            batch.drop_column(f'{outcome}_cost_usd')
            batch.drop_column(f'{outcome}_calls')
    with op.batch_alter_table('call') as batch:
        batch.drop_column('finish')
