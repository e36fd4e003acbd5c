"""The job store's hot-path statements: claiming, finishing, settling followers. Raw SQL because
each is one ``UPDATE ... FROM unnest(...)`` (or a CTE of two) that SQLAlchemy's expression language
would only obscure; ``db.store.JobStore`` is the one caller.

``INSERT_JOBS``, ``MARK_SENT``, ``CLAIM`` and ``FINISH`` run on the driver's cursor
(``db.engine.driver_cursor``), so they are written in psycopg's ``%(name)s`` style and take their
column arrays as array literals (``db.array_literals``); the others go through SQLAlchemy's
``text``.

``CLAIM`` and ``FINISH`` read their arrays through a scalar subquery, ``unnest((SELECT
CAST(%(ids)s AS uuid[])), ...)``, so that Postgres plans them once per connection. psycopg
prepares a statement after its fifth run; Postgres then keeps a generic plan only if it looks no
dearer than the custom plans so far, and a custom plan, seeing the literal array, counted its
rows (1-3 under single-message load) where the generic one can only guess: every run was planned
again, 300 µs of server CPU, more than the update itself. Behind the subquery both guess the
same, and the plan is made once (measured, one row per statement: claim 630 -> 300 µs of
Postgres CPU, finish 470 -> 270; batches of 64: unchanged). The guess is a few rows, so the plan
joins by primary key, which is right for any batch.
"""

from __future__ import annotations

from sqlalchemy import text

# New rows from one array per column: one statement whatever the count, no per-row parameters to
# bind (a multi-row VALUES insert binds 15 per row; measured with 5,000 rows: 38 -> 16 µs of
# Postgres CPU per job, and the client's side of it about halved). ``blob_keys`` travel as one
# space-separated string per row (content keys are hex digits; NULL for none): Postgres has no
# array of arrays of varying length. Payloads come as one bytea with each row's slice
# (``db.array_literals.bytea_slices``).
INSERT_JOBS = (
    """
    INSERT INTO jobs (id, kind, target, version, cache_key, payload, status, params, cache_hit,
                      priority, tenant, idempotency_key, deadline, blob_keys, finished_at)
    SELECT u.id, u.kind, u.target, u.version, u.cache_key,
           substring(CAST(%(payloads)s AS bytea) FROM u.payload_at FOR u.payload_length),
           u.status, u.params, u.cache_hit, u.priority, u.tenant, u.idempotency_key, u.deadline,
           string_to_array(u.blob_keys, ' '), CASE WHEN u.finished THEN now() END
    FROM unnest(CAST(%(ids)s AS uuid[]), CAST(%(kinds)s AS text[]), CAST(%(targets)s AS text[]),
                CAST(%(versions)s AS text[]), CAST(%(cache_keys)s AS text[]),
                CAST(%(payload_at)s AS int[]), CAST(%(payload_lengths)s AS int[]),
                CAST(%(statuses)s AS text[]),
                CAST(%(params)s AS jsonb[]), CAST(%(cache_hits)s AS boolean[]),
                CAST(%(priorities)s AS smallint[]), CAST(%(tenants)s AS text[]),
                CAST(%(idempotency_keys)s AS text[]), CAST(%(deadlines)s AS timestamptz[]),
                CAST(%(blob_keys)s AS text[]), CAST(%(finished)s AS boolean[]))
         AS u(id, kind, target, version, cache_key, payload_at, payload_length, status, params,
              cache_hit, priority, tenant, idempotency_key, deadline, blob_keys, finished)
    """
)

# The outbox's late mark (producers.outbox): queued rows by primary key. "Queued" is said as
# "in no later status" on purpose: written ``status = 'queued'`` it lets the planner take
# ix_jobs_unsent instead of the primary key, and test every row of that index against the whole
# array of ids, which under load it did (measured: 100 s for 30,000 ids, and 4 s for 20,000 as
# a join on unnest, every claim of those rows waiting on it). SKIP LOCKED: see
# JobStore.mark_sent.
MARK_SENT = (
    """
    WITH due AS (
        SELECT id FROM jobs
        WHERE id = ANY(CAST(%(ids)s AS uuid[])) AND sent_at IS NULL
          AND status <> ALL (ARRAY['running', 'succeeded', 'failed', 'cancelled', 'expired'])
        FOR UPDATE SKIP LOCKED
    )
    UPDATE jobs SET sent_at = now() FROM due WHERE jobs.id = due.id
    """
)

# Which deliveries may start a run (see ClaimRequest): a first delivery takes a queued job; a
# redelivery may take over a running one at the same step (only from the worker it saw dead, if
# it names one: a run another delivery took over meanwhile is not taken again); a pipeline step
# continues the run that forwarded it (same attempt, previous step); and a worker may claim
# again what it holds itself (its claim is retried after a lost connection). Starting a run of
# step 0, or taking a run over, counts against the attempt budget; continuing a pipeline (a
# redelivered step that had not begun included), or claiming again, does not.
# A fresh start of a job identical to one already running (same cache key) does not run: it
# follows that job (``follows``) and takes its end state and result when it finishes. One
# identical to a job that has succeeded since it was submitted says so (``twin_stored``, from
# ix_jobs_result_key), and its run takes that result from Redis instead of running the model.
# That probe asks for a result and not for a status: only a succeeded row holds a result, and a
# `status = 'succeeded'` would let the planner read every succeeded row through ix_jobs_ended
# (migration 0012).
_OWN = "(jobs.status = 'running' AND jobs.worker = %(worker)s AND jobs.step = u.step)"
_TAKES_OVER = ("(u.takeover AND jobs.status = 'running' AND jobs.step = u.step "
               "AND (u.holder IS NULL OR jobs.worker = u.holder))")
_COUNTS = f"((u.step = 0 OR {_TAKES_OVER}) AND NOT {_OWN})"
_GIVE_UP = f"({_COUNTS} AND jobs.attempts >= %(max_attempts)s)"
_PAST_DEADLINE = "(jobs.deadline IS NOT NULL AND jobs.deadline < now())"
CLAIM = (
    f"""
    UPDATE jobs SET
        status = CASE WHEN {_PAST_DEADLINE} THEN 'expired'
                      WHEN {_GIVE_UP} THEN 'failed'
                      ELSE 'running' END,
        error = CASE WHEN NOT {_PAST_DEADLINE} AND {_GIVE_UP} THEN %(gave_up)s ELSE jobs.error END,
        attempts = jobs.attempts + CASE WHEN {_COUNTS} THEN 1 ELSE 0 END,
        step = u.step,
        started_at = now(),
        finished_at = CASE WHEN {_PAST_DEADLINE} OR {_GIVE_UP} THEN now() ELSE NULL END,
        worker = %(worker)s,
        follows = CASE WHEN u.step = 0 AND jobs.status = 'queued'
                            AND NOT {_PAST_DEADLINE} AND NOT {_GIVE_UP}
                       THEN (SELECT leader.id FROM jobs AS leader
                             WHERE leader.cache_key = jobs.cache_key
                               AND leader.status = 'running' AND leader.follows IS NULL
                               AND leader.id <> jobs.id
                             LIMIT 1)
                       END
    FROM unnest((SELECT CAST(%(ids)s AS uuid[])), (SELECT CAST(%(steps)s AS int[])),
                (SELECT CAST(%(attempts)s AS int[])), (SELECT CAST(%(takeovers)s AS boolean[])),
                (SELECT CAST(%(holders)s AS text[])))
         AS u(id, step, attempt, takeover, holder)
    WHERE jobs.id = u.id AND (
        (u.step = 0 AND jobs.status = 'queued')
        OR ({_OWN} AND (u.step = 0 OR jobs.attempts = u.attempt))
        OR (u.step = 0 AND {_TAKES_OVER})
        OR (u.step > 0 AND jobs.status = 'running' AND jobs.attempts = u.attempt
            AND (jobs.step = u.step - 1 OR {_TAKES_OVER})))
    RETURNING CAST(jobs.id AS text), jobs.status, jobs.attempts, CAST(jobs.follows AS text),
              CAST(EXTRACT(EPOCH FROM now() - jobs.created_at) AS double precision) AS queued_s,
              CASE WHEN jobs.status = 'running' AND jobs.follows IS NULL
                   THEN EXISTS (SELECT 1 FROM jobs AS twin
                                WHERE twin.cache_key = jobs.cache_key
                                  AND twin.result IS NOT NULL)
                   ELSE false END AS twin_stored
    """
)

# The end states of a batch, and (same statement) of the jobs that follow them. A large output's
# blob key joins the row's blob_keys (a follower takes its leader's: same input, same output).
# Results come as one bytea with each row's slice (``db.array_literals.bytea_slices``); ids go
# back as text, so no UUID object is made per row.
FINISH = (
    """
    WITH done AS (
        UPDATE jobs SET status = u.status, error = u.error, finished_at = now(),
                        result = coalesce(substring(CAST(%(results)s AS bytea)
                                                    FROM u.result_at FOR u.result_length),
                                          jobs.result),
                        blob_keys = CASE WHEN u.blob_key IS NULL THEN jobs.blob_keys
                                         ELSE array_append(jobs.blob_keys, u.blob_key) END
        FROM unnest((SELECT CAST(%(ids)s AS uuid[])), (SELECT CAST(%(attempts)s AS int[])),
                    (SELECT CAST(%(statuses)s AS text[])), (SELECT CAST(%(errors)s AS text[])),
                    (SELECT CAST(%(result_at)s AS int[])),
                    (SELECT CAST(%(result_lengths)s AS int[])),
                    (SELECT CAST(%(blob_keys)s AS text[])))
             AS u(id, attempt, status, error, result_at, result_length, blob_key)
        WHERE jobs.id = u.id AND jobs.attempts = u.attempt AND jobs.status = 'running'
        RETURNING jobs.id, jobs.status, jobs.error, jobs.result, jobs.blob_keys
    ), followed AS (
        UPDATE jobs AS follower
        SET status = done.status, error = done.error, result = done.result, finished_at = now(),
            blob_keys = done.blob_keys
        FROM done
        WHERE follower.follows = done.id AND follower.status = 'running'
        RETURNING follower.id
    )
    SELECT CAST(id AS text) FROM done
    """
)

# Followers whose leader ended without them (cancelled, expired, failed out of attempts, or a
# race with its finish): take a finished leader's end, or go back to the queue unsent, where the
# sweeper publishes them.
SETTLE_FOLLOWERS = text(
    """
    UPDATE jobs AS follower SET
        status = CASE WHEN leader.status IN ('succeeded', 'failed') THEN leader.status
                      ELSE 'queued' END,
        error = CASE WHEN leader.status IN ('succeeded', 'failed') THEN leader.error END,
        result = CASE WHEN leader.status = 'succeeded' THEN leader.result END,
        blob_keys = CASE WHEN leader.status = 'succeeded' THEN leader.blob_keys
                         ELSE follower.blob_keys END,
        finished_at = CASE WHEN leader.status IN ('succeeded', 'failed') THEN now() END,
        sent_at = CASE WHEN leader.status IN ('succeeded', 'failed') THEN follower.sent_at END,
        follows = NULL
    FROM jobs AS leader
    WHERE follower.follows = leader.id AND follower.status = 'running'
      AND leader.status IN ('succeeded', 'failed', 'cancelled', 'expired')
    RETURNING follower.id
    """
)
