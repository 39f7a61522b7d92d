"""An endpoint's signing secret can be rotated without losing a delivery: the previous secret
is kept, sealed like the current one, until ``previous_secret_until``, and every attempt
until then is signed with both (the Standard Webhooks ``webhook-signature`` header is a
space-delimited list for exactly this).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03

Only columns are added: a webhooks process of the previous release keeps signing with the
current secret and never reads them, so it may run while this migrates. It signs with the
current secret only, though: rotate no secret until every webhooks process runs this
release (docs/operations.md, upgrading across 0010).
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade(**kw: str) -> None:
    """Add the previous secret, until when it signs, and when the secret last changed."""
    op.execute(
        "ALTER TABLE webhook_endpoints ADD COLUMN IF NOT EXISTS previous_secret bytea, "
        "ADD COLUMN IF NOT EXISTS previous_secret_until timestamptz, "
        "ADD COLUMN IF NOT EXISTS secret_rotated_at timestamptz"
    )


def downgrade(**kw: str) -> None:
    raise NotImplementedError("tieline migrates forward only; restore a backup to go back")
