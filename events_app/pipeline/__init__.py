"""The AI-processing pipeline (SPEC section 3): tasks -> pipeline -> models, one way.

- processing.py: the orchestration of a message: chunks, drains, time budgets, errors.
- claims.py: pending -> processing, one statement per chunk; the claim time fences every write.
- plan.py: what each event of a chunk establishes (facts folded in arrival order) and the
  processor's insights, outside any transaction.
- completion.py: the chunk's one transaction (fenced completion, failures settled, rollups);
  retries and their backoff.
- processors/: the pluggable processors (local deterministic, OpenAI-compatible).
- facts.py, rollups.py, engagement.py: what an event adds to its CRM record.
- queue.py: publishing work (ids only) by task name, so nothing here imports events_app.tasks;
  sweep.py: re-queueing what was lost; reprocess.py: processing events again without counting
  them twice.

This package imports nothing at its top so that ingest can import `queue` cheaply.
"""
