"""The AI-processing pipeline (SPEC section 3).

- processing.py: claim, facts, processor, completion in one transaction, retries.
- processors/: the pluggable processors (local deterministic, OpenAI-compatible).
- facts.py, rollups.py, engagement.py: what an event adds to its CRM record.
- queue.py: publishing work (ids only); sweep.py: re-queueing what was lost;
  reprocess.py: processing events again without counting them twice.

This package imports nothing at its top so that ingest can import `queue` cheaply.
"""
