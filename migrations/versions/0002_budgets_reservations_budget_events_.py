"""budgets, reservations, budget events, daily call rollups

Reviewed by hand: on_budget gets a server default so existing jobs migrate.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 08:44:53.473909
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
import sqlmodel

from router.ledger.types import Money

revision: str = '0002'
down_revision: Union[str, None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('call_rollup',
    sa.Column('tenant_id', sa.Integer(), nullable=False),
    sa.Column('team_id', sa.Integer(), nullable=False),
    sa.Column('job_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('model_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('purpose', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('provider', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('task', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('calls', sa.Integer(), nullable=False),
    sa.Column('failed_calls', sa.Integer(), nullable=False),
    sa.Column('simulated_calls', sa.Integer(), nullable=False),
    sa.Column('input_tokens', sa.BigInteger(), nullable=False),
    sa.Column('cached_input_tokens', sa.BigInteger(), nullable=False),
    sa.Column('output_tokens', sa.BigInteger(), nullable=False),
    sa.Column('cost_usd', Money(), nullable=False),
    sa.Column('failed_cost_usd', Money(), nullable=False),
    sa.Column('baseline_cost_usd', Money(), nullable=False),
    sa.PrimaryKeyConstraint('tenant_id', 'team_id', 'job_id', 'model_id', 'purpose', 'day')
    )
    with op.batch_alter_table('call_rollup', schema=None) as batch_op:
        batch_op.create_index('ix_call_rollup_day', ['day'], unique=False)

    op.create_table('budget_event',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('team_id', sa.Integer(), nullable=False),
    sa.Column('period_start', sa.Date(), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('detail', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['team_id'], ['team.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('budget_event', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_budget_event_team_id'), ['team_id'], unique=False)

    op.create_table('budget_period',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('team_id', sa.Integer(), nullable=False),
    sa.Column('period_start', sa.Date(), nullable=False),
    sa.Column('limit_amount', Money(), nullable=False),
    sa.Column('currency', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('soft_pct', sa.Float(), nullable=True),
    sa.Column('settled', Money(), nullable=False),
    sa.Column('reserved', Money(), nullable=False),
    sa.Column('soft_alerted_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['team_id'], ['team.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('team_id', 'period_start')
    )
    op.create_table('budget_policy',
    sa.Column('team_id', sa.Integer(), nullable=False),
    sa.Column('monthly_limit', Money(), nullable=False),
    sa.Column('currency', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('soft_pct', sa.Float(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['team_id'], ['team.id'], ),
    sa.PrimaryKeyConstraint('team_id')
    )
    op.create_table('reservation',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('budget_period_id', sa.Integer(), nullable=False),
    sa.Column('job_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('amount', Money(), nullable=False),
    sa.Column('settled_amount', Money(), nullable=True),
    sa.Column('usd_per_unit', Money(), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['budget_period_id'], ['budget_period.id'], ),
    sa.ForeignKeyConstraint(['job_id'], ['job.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('reservation', schema=None) as batch_op:
        batch_op.create_index('ix_reservation_open', ['budget_period_id', 'status', 'expires_at'], unique=False)

    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.add_column(sa.Column('on_budget', sqlmodel.sql.sqltypes.AutoString(), nullable=False, server_default='reject'))
        batch_op.add_column(sa.Column('baseline_input_usd_per_mtok', Money(), nullable=True))
        batch_op.add_column(sa.Column('baseline_output_usd_per_mtok', Money(), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_column('baseline_output_usd_per_mtok')
        batch_op.drop_column('baseline_input_usd_per_mtok')
        batch_op.drop_column('on_budget')

    with op.batch_alter_table('reservation', schema=None) as batch_op:
        batch_op.drop_index('ix_reservation_open')

    op.drop_table('reservation')
    op.drop_table('budget_policy')
    op.drop_table('budget_period')
    with op.batch_alter_table('budget_event', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_budget_event_team_id'))

    op.drop_table('budget_event')
    with op.batch_alter_table('call_rollup', schema=None) as batch_op:
        batch_op.drop_index('ix_call_rollup_day')

    op.drop_table('call_rollup')
