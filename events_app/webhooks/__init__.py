"""Outbound webhooks (docs/webhooks.md): signing and its verification helper so far.

This package will own the rest of the outbox as it lands: endpoints, deliveries, the sender,
and the address guard. It sits below the pipeline, which writes deliveries in its own
transactions, and above the models. Not wired to the pipeline or the API yet (issue #14 is open).
"""
