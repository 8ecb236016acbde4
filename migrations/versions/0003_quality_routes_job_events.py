"""quality estimates, job routes and calibration, job events, reasoning tokens

Reviewed by hand: new job and call columns get server defaults so existing rows migrate.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 16:45:00
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
import sqlmodel

from router.ledger.types import Money

revision: str = '0003'
down_revision: Union[str, None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('job') as batch:
        batch.add_column(sa.Column('route', sa.JSON(), nullable=True))
        batch.add_column(sa.Column('quality_mode', sqlmodel.sql.sqltypes.AutoString(), nullable=False, server_default='prior'))
        batch.add_column(sa.Column('calibration', sa.JSON(), nullable=True))
        batch.add_column(sa.Column('stopped_providers', sa.JSON(), nullable=True))
        batch.add_column(sa.Column('pause_reason', sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch.add_column(sa.Column('n_drift_checked', sa.Integer(), nullable=False, server_default='0'))
        batch.add_column(sa.Column('n_drift_agreed', sa.Integer(), nullable=False, server_default='0'))
    with op.batch_alter_table('call') as batch:
        batch.add_column(sa.Column('reasoning_tokens', sa.Integer(), nullable=False, server_default='0'))
    op.create_table('job_event',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('detail', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['job.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_job_event_job_id'), 'job_event', ['job_id'], unique=False)
    op.create_table('quality_estimate',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('tenant_id', sa.Integer(), nullable=False),
    sa.Column('signature', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('task', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('model_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('source', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('n', sa.Integer(), nullable=False),
    sa.Column('successes', sa.Float(), nullable=False),
    sa.Column('mean', sa.Float(), nullable=False),
    sa.Column('lower', sa.Float(), nullable=False),
    sa.Column('upper', sa.Float(), nullable=False),
    sa.Column('confidence', sa.Float(), nullable=False),
    sa.Column('input_usd_per_mtok', Money(), nullable=False),
    sa.Column('output_usd_per_mtok', Money(), nullable=False),
    sa.Column('job_id', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('measured_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('drifted_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenant.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('tenant_id', 'signature', 'model_id')
    )


def downgrade() -> None:
    op.drop_table('quality_estimate')
    op.drop_index(op.f('ix_job_event_job_id'), table_name='job_event')
    op.drop_table('job_event')
    with op.batch_alter_table('call') as batch:
        batch.drop_column('reasoning_tokens')
    with op.batch_alter_table('job') as batch:
        for name in ('n_drift_agreed', 'n_drift_checked', 'pause_reason', 'stopped_providers', 'calibration', 'quality_mode', 'route'):
            batch.drop_column(name)
