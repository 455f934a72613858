"""Outbound webhooks (docs/webhooks.md).

Signing and its receiver-side check (`signing`), the URL rule (`addresses`), endpoints and their
encrypted secrets (`endpoints`, `secrets`), the outbox the pipeline writes in its completing
transaction (`outbox`, `payloads`), and the sender on the `webhooks` queue with its retries and
sweep (`sending`, over `http`). The package sits below the pipeline, which writes deliveries in
its own transactions, and above the models.
"""
