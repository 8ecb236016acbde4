"""the HTTP API: tenant API keys (hashed), OpenAI-compatible files (in chunks) and batches

Reviewed by hand. New tables only: nothing existing changes.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 06:30:00
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
import sqlmodel

revision: str = '0006'
down_revision: Union[str, None] = '0005'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

TS = sa.DateTime(timezone=True)
STR = sqlmodel.sql.sqltypes.AutoString


def upgrade() -> None:
    op.create_table(
        'api_key',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('prefix', STR(), nullable=False),
        sa.Column('key_hash', STR(), nullable=False),
        sa.Column('tenant_id', sa.Integer(), sa.ForeignKey('tenant.id'), nullable=False),
        sa.Column('team_id', sa.Integer(), sa.ForeignKey('team.id'), nullable=True),
        sa.Column('scopes', sa.JSON(), nullable=False),
        sa.Column('created_at', TS, nullable=True),
        sa.Column('last_used_at', TS, nullable=True),
        sa.Column('revoked_at', TS, nullable=True),
    )
    op.create_index('ix_api_key_prefix', 'api_key', ['prefix'], unique=True)
    op.create_index('ix_api_key_tenant_id', 'api_key', ['tenant_id'])
    op.create_table(
        'api_file',
        sa.Column('id', STR(), primary_key=True),
        sa.Column('tenant_id', sa.Integer(), sa.ForeignKey('tenant.id'), nullable=False),
        sa.Column('team_id', sa.Integer(), sa.ForeignKey('team.id'), nullable=True),
        sa.Column('filename', STR(), nullable=False),
        sa.Column('purpose', STR(), nullable=False),
        sa.Column('bytes', sa.BigInteger(), nullable=False),
        sa.Column('batch_id', STR(), nullable=True),
        sa.Column('kind', STR(), nullable=False),
        sa.Column('created_at', TS, nullable=True),
    )
    op.create_index('ix_api_file_tenant_id', 'api_file', ['tenant_id'])
    op.create_table(
        'api_file_chunk',
        sa.Column('file_id', STR(), sa.ForeignKey('api_file.id'), primary_key=True),
        sa.Column('seq', sa.Integer(), primary_key=True),
        sa.Column('data', sa.LargeBinary(), nullable=False),
    )
    op.create_table(
        'api_batch',
        sa.Column('id', STR(), primary_key=True),
        sa.Column('tenant_id', sa.Integer(), sa.ForeignKey('tenant.id'), nullable=False),
        sa.Column('team_id', sa.Integer(), sa.ForeignKey('team.id'), nullable=False),
        sa.Column('input_file_id', STR(), sa.ForeignKey('api_file.id'), nullable=False),
        sa.Column('endpoint', STR(), nullable=False),
        sa.Column('completion_window', STR(), nullable=False),
        sa.Column('metadata', sa.JSON(), nullable=True),
        sa.Column('dedupe_key', STR(), nullable=False),
        sa.Column('status', STR(), nullable=False),
        sa.Column('job_ids', sa.JSON(), nullable=False),
        sa.Column('lines', sa.JSON(), nullable=True),
        sa.Column('n_total', sa.Integer(), nullable=False),
        sa.Column('errors', sa.JSON(), nullable=True),
        sa.Column('output_file_id', STR(), nullable=True),
        sa.Column('error_file_id', STR(), nullable=True),
        sa.Column('created_at', TS, nullable=True),
        sa.Column('in_progress_at', TS, nullable=True),
        sa.Column('finalizing_at', TS, nullable=True),
        sa.Column('completed_at', TS, nullable=True),
        sa.Column('failed_at', TS, nullable=True),
        sa.Column('cancelling_at', TS, nullable=True),
        sa.Column('cancelled_at', TS, nullable=True),
    )
    op.create_index('ix_api_batch_tenant_id', 'api_batch', ['tenant_id'])
    op.create_index('ix_api_batch_dedupe', 'api_batch', ['tenant_id', 'dedupe_key', 'created_at'])


def downgrade() -> None:
    op.drop_table('api_batch')
    op.drop_table('api_file_chunk')
    op.drop_table('api_file')
    op.drop_table('api_key')
