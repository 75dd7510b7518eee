"""scope idempotency keys per client; count retries

Revision ID: 5521b1003770
Revises: 82b5868ece3c
Create Date: 2026-11-30 03:18:47.099170

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '5521b1003770'
down_revision: Union[str, Sequence[str], None] = '82b5868ece3c'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


#: Names the unnamed unique constraint of the initial schema, so it can be dropped on SQLite
#: (whose batch mode rebuilds the table); PostgreSQL named it executions_idempotency_key_key.
NAMING = {"uq": "%(table_name)s_%(column_0_name)s_key"}


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('executions', schema=None, naming_convention=NAMING) as batch_op:
        batch_op.add_column(
            sa.Column('retries', sa.Integer(), nullable=False, server_default='0')
        )
        batch_op.drop_constraint('executions_idempotency_key_key', type_='unique')
        batch_op.create_unique_constraint(
            'uq_executions_client_idempotency', ['client_id', 'idempotency_key']
        )


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('executions', schema=None) as batch_op:
        batch_op.drop_constraint('uq_executions_client_idempotency', type_='unique')
        batch_op.create_unique_constraint('executions_idempotency_key_key', ['idempotency_key'])
        batch_op.drop_column('retries')
