"""Persistence: the Postgres job store, the Redis result cache, and migrations."""

from db.cache import Notice, ResultCache
from db.records import Claim, JobRecord, NewJob, Outcome
from db.store import JobStore

__all__ = ["Claim", "JobRecord", "JobStore", "NewJob", "Notice", "Outcome", "ResultCache"]
