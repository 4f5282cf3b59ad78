"""The ledger: every number the bot keeps (quotas, reservations, charges, images, templates)."""

from bot.ledger.ledger import Ledger
from bot.ledger.records import ImageRecord, Job, Limits, Template, Usage, UsageReport

__all__ = ["ImageRecord", "Job", "Ledger", "Limits", "Template", "Usage", "UsageReport"]
