"""Persistence: the Postgres job store, the Redis result cache, and migrations."""

from db.cache import Notice, ResultCache
from db.records import Claim, ClaimRequest, JobRecord, JobRun, NewJob, Outcome, UnsentJob
from db.store import JobStore

__all__ = ["Claim", "ClaimRequest", "JobRecord", "JobRun", "JobStore", "NewJob", "Notice",
           "Outcome", "ResultCache", "UnsentJob"]
