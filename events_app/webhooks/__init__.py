"""Outbound webhooks (docs/webhooks.md), being built for issue #14.

Built: signing and its receiver-side check (`signing`), the URL rule (`addresses`), endpoints
and their encrypted secrets (`endpoints`, `secrets`), and the outbox the pipeline writes in its
completing transaction (`outbox`, `payloads`). Not built: the sender on the `webhooks` queue,
retries, the API and the admin. The package sits below the pipeline, which writes deliveries
in its own transactions, and above the models.
"""
