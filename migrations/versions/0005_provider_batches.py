"""provider batches: the provider_batch table; call mode, price multiplier and batch; job deadline and
execution decision; rollup sums of batch calls and what the batch discount saved

Reviewed by hand: new columns get server defaults so existing rows migrate (every call so far was
synchronous, at the standard price: mode 'sync', multiplier 1; no rollup counted a batch call: 0).
batch_alter_table keeps SQLite (the embedded default) working.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 06:20:00
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
import sqlmodel

from router.ledger.types import Money

revision: str = '0005'
down_revision: Union[str, None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('provider_batch',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('job_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('wave', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('provider', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('model_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('batch_id', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('vendor_status', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('n_lines', sa.Integer(), nullable=False, server_default='0'),
    sa.Column('stage', sa.Integer(), nullable=False, server_default='0'),
    sa.Column('stage_models', sa.JSON(), nullable=True),
    sa.Column('round', sa.Integer(), nullable=False, server_default='1'),
    sa.Column('simulated', sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column('price_multiplier', Money(), nullable=False, server_default='1'),
    sa.Column('reserved_usd', Money(), nullable=False, server_default='0'),
    sa.Column('reservation_id', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('submitted_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('polled_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('ingested_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('error', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['job.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_provider_batch_job', 'provider_batch', ['job_id'], unique=False)
    op.create_index('ix_provider_batch_state', 'provider_batch', ['state'], unique=False)
    op.create_index('ix_provider_batch_wave', 'provider_batch', ['wave'], unique=False)
    with op.batch_alter_table('call') as batch:
        batch.add_column(sa.Column('mode', sqlmodel.sql.sqltypes.AutoString(), nullable=False, server_default='sync'))
        batch.add_column(sa.Column('price_multiplier', Money(), nullable=False, server_default='1'))
        batch.add_column(sa.Column('provider_batch_id', sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch.create_index('ix_call_provider_batch', ['provider_batch_id'], unique=False)
    with op.batch_alter_table('job') as batch:
        batch.add_column(sa.Column('deadline_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('mode', sqlmodel.sql.sqltypes.AutoString(), nullable=False, server_default='auto'))
        batch.add_column(sa.Column('execution', sa.JSON(), nullable=True))
    with op.batch_alter_table('call_rollup') as batch:
        batch.add_column(sa.Column('batch_calls', sa.Integer(), nullable=False, server_default='0'))
        batch.add_column(sa.Column('batch_cost_usd', Money(), nullable=False, server_default='0'))
        batch.add_column(sa.Column('batch_saved_usd', Money(), nullable=False, server_default='0'))


def downgrade() -> None:
    with op.batch_alter_table('call_rollup') as batch:
        for name in ('batch_saved_usd', 'batch_cost_usd', 'batch_calls'):
            batch.drop_column(name)
    with op.batch_alter_table('job') as batch:
        for name in ('execution', 'mode', 'deadline_at'):
            batch.drop_column(name)
    with op.batch_alter_table('call') as batch:
        batch.drop_index('ix_call_provider_batch')
        for name in ('provider_batch_id', 'price_multiplier', 'mode'):
            batch.drop_column(name)
    op.drop_index('ix_provider_batch_wave', table_name='provider_batch')
    op.drop_index('ix_provider_batch_state', table_name='provider_batch')
    op.drop_index('ix_provider_batch_job', table_name='provider_batch')
    op.drop_table('provider_batch')
