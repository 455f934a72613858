"""Sending the outbox: the `webhooks` queue's work, its retries, and its sweep.

One message names an endpoint, not a delivery: `webhooks.deliver(<endpoint id>)` drains that
endpoint's due deliveries one at a time, within a time budget (`endpoint_drain`). Messages are
published after the commit that wrote the deliveries, and coalesced like the pipeline's
wake-ups: while one is queued and unstarted for an endpoint, no other is published.

The database is the source of truth for every decision:
- **A claim** is a conditional UPDATE of the delivery (`claimed_at`, its fencing token), made
  while the endpoint's row is locked by a no-op UPDATE that also checks it is still enabled. In
  that transaction the claims in flight for the endpoint are counted first, so an endpoint never
  has more than BIGMIND_WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT sends at once: one slow receiver
  holds that many workers, never all of them. A drain that finds the cap reached stops.
- **A result** is written only if the claim is still ours (fenced on `claimed_at`).
- **A worker killed mid-send** leaves its claim; once older than the lease
  (BIGMIND_WEBHOOK_CLAIM_LEASE_SECONDS, longer than any attempt can take) the delivery may be
  claimed again, and is sent again under the same id.
- **Retries** wait an exponential backoff with jitter, and stop BIGMIND_WEBHOOK_RETRY_FOR_SECONDS
  (3 days) after the delivery was written: it is then `failed`. A short wait is a delayed
  message; a long one is left to the sweep.
- **An endpoint** whose deliveries all fail for BIGMIND_WEBHOOK_DISABLE_AFTER_SECONDS (3 days,
  `failing_since`) is disabled, with the reason; a success ends the run of failures.
- **The sweep** (`deliveries_sweep`, in every `events.sweep`) wakes each enabled endpoint with due
  deliveries, so a lost message, a broker restart or a long backoff only delays them, and drops
  deliveries left without their endpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from celery import Task, current_app
from django.conf import settings
from django.core.cache import cache
from django.db import connection, transaction
from django.db.models import Count, Exists, F, Max, OuterRef, Q
from django.utils import timezone

from bigmind.backoff import backoff_delay
from bigmind.errors import ApplicationError
from events_app import dialect, metrics
from events_app.ids import uuid7
from events_app.models import (
    Event,
    WebhookDelivery,
    WebhookDeliveryStatus,
    WebhookEndpoint,
    WebhookEventType,
)
from events_app.webhooks import http
from events_app.webhooks.endpoints import endpoint_disable, signing_secrets
from events_app.webhooks.payloads import body, event_data
from events_app.webhooks.signing import HEADER, header_value

logger = logging.getLogger(__name__)

# The name events_app/tasks.py registers the sender under; published by name (see
# events_app/pipeline/queue.py for why the task module is never imported from here).
DELIVER_TASK = "webhooks.deliver"
USER_AGENT = "Bigmind-Webhooks/1"
ID_HEADER = "Bigmind-Webhook-Id"
# Any attempt, from the first byte sent to the last read, within this (the contract's 10 s).
TIMEOUT_SECONDS = 10.0
# A retry due within this is a delayed message; a later one is the sweep's.
DELAYED_MESSAGE_MAX_SECONDS = 300.0
# Deliveries one sender claims at once (one claim and one result statement for them all).
CLAIM_SIZE = 20
# Two claims of one endpoint never share a token (their claim time).
_TICK = timedelta(microseconds=1)
_WAKE_KEY = "webhooks:wake:{}"


def _task() -> Task:
    return current_app.tasks[DELIVER_TASK]


# --- Waking endpoints ----------------------------------------------------------------------------


def endpoints_wake(*, endpoint_ids: Iterable[int], force: bool = False) -> int:
    """Publish a drain for each endpoint, unless one is queued and unstarted (`force`: the
    sweep, which cannot know whether that message still exists). Returns how many were sent."""
    published = 0
    for endpoint_id in sorted(set(endpoint_ids)):
        if not force and _wake_queued(endpoint_id):
            continue
        try:
            _task().delay(endpoint_id)
        except Exception:
            logger.exception("queueing endpoint %s's webhooks failed; the sweep will", endpoint_id)
            _wake_started(endpoint_id)
            continue
        published += 1
    return published


def deliveries_committed(*, endpoint_ids: Iterable[int]) -> None:
    """Wake these endpoints once the current transaction commits (nothing if it rolls back)."""
    ids = sorted(set(endpoint_ids))
    if ids:
        transaction.on_commit(partial(endpoints_wake, endpoint_ids=ids))


def _wake_queued(endpoint_id: int) -> bool:
    ttl = settings.BIGMIND_WAKEUP_TTL_SECONDS
    if ttl <= 0:
        return False
    try:
        return not cache.add(_WAKE_KEY.format(endpoint_id), 1, ttl)
    except Exception:
        return False


def _wake_started(endpoint_id: int) -> None:
    try:
        cache.delete(_WAKE_KEY.format(endpoint_id))
    except Exception:
        logger.warning("could not clear the webhook wake-up flag; it expires on its own")


def _wake_later(endpoint_id: int, countdown: float) -> None:
    try:
        _task().apply_async((endpoint_id,), countdown=countdown)
    except Exception:
        logger.exception("queueing a webhook retry failed; the sweep will send it")


# --- Draining an endpoint -------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """Deliveries of one endpoint claimed together by one sender, under one fencing token."""

    endpoint: WebhookEndpoint
    deliveries: list[WebhookDelivery]
    token: datetime


def _lease() -> timedelta:
    return timedelta(seconds=settings.BIGMIND_WEBHOOK_CLAIM_LEASE_SECONDS)


def _claimable(now: datetime) -> Q:
    return Q(status=WebhookDeliveryStatus.PENDING, next_attempt_at__lte=now) & (
        Q(claimed_at__isnull=True) | Q(claimed_at__lt=now - _lease())
    )


def deliveries_claim(
    *, endpoint_id: int, now: datetime | None = None, limit: int = CLAIM_SIZE
) -> Claim | None:
    """Up to `limit` of the endpoint's due deliveries, oldest due first, claimed for one sender;
    None when nothing is due, the endpoint is gone or disabled, or it has its cap of senders.

    A sender's token is its claim time, unique among the endpoint's live claims (the claims are
    made one at a time, under the endpoint's lock), so the senders in flight are the distinct
    live tokens."""
    now = now or timezone.now()
    with transaction.atomic():
        # Locks the endpoint's row (PostgreSQL: the row; SQLite: the database) for the count and
        # the claim below, so two drains cannot both take the last slot.
        if not WebhookEndpoint.objects.filter(pk=endpoint_id, enabled=True).update(enabled=True):
            return None
        endpoint = WebhookEndpoint.objects.select_related("organization").get(pk=endpoint_id)
        live = WebhookDelivery.objects.filter(
            endpoint_id=endpoint_id,
            status=WebhookDeliveryStatus.PENDING,
            claimed_at__gte=now - _lease(),
        ).aggregate(senders=Count("claimed_at", distinct=True), last=Max("claimed_at"))
        if live["senders"] >= settings.BIGMIND_WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT:
            return None
        token = now if live["last"] is None or live["last"] < now else live["last"] + _TICK
        ids = list(
            WebhookDelivery.objects.filter(_claimable(now), endpoint_id=endpoint_id)
            .order_by("next_attempt_at")
            .values_list("pk", flat=True)[:limit]
        )
        if not ids:
            return None
        # Claimable still: a sender whose lease ran out may have just finished one of them
        # (its results need no lock on the endpoint). The rows claimed are read back by token.
        WebhookDelivery.objects.filter(_claimable(now), pk__in=ids).update(
            claimed_at=token, attempts=F("attempts") + 1
        )
        claimed = WebhookDelivery.objects.filter(
            pk__in=ids, claimed_at=token, status=WebhookDeliveryStatus.PENDING
        )
        deliveries = bodies_build(
            list(claimed.order_by("next_attempt_at")),
            organization=endpoint.organization.slug,
            now=now,
        )
    if not deliveries:
        return None
    return Claim(endpoint=endpoint, deliveries=deliveries, token=token)


EVENT_GONE = "The event was deleted (retention) before this delivery was first sent"


def _events_of(deliveries: list[WebhookDelivery]) -> list[Event]:
    """The events of these deliveries. By (id, received_at range) for those that know their
    event's received_at: that names the events' partitions, where a read by id alone visits
    every partition; by id alone for deliveries written by an earlier release."""
    timed = [d for d in deliveries if d.event_received_at is not None]
    untimed = {
        d.event_id for d in deliveries if d.event_received_at is None and d.event_id is not None
    }
    events = Event.objects.select_related("signal")
    found: list[Event] = []
    if timed:
        times = [d.event_received_at for d in timed if d.event_received_at is not None]
        found += events.filter(dialect.received_range(times), id__in={d.event_id for d in timed})
    if untimed:
        found += events.filter(id__in=untimed)
    return found


def bodies_build(
    deliveries: list[WebhookDelivery], *, organization: str, now: datetime
) -> list[WebhookDelivery]:
    """Build and keep the body of each delivery that has none yet (its first attempt): the
    event as GET /v1/events/<id> shows it now, beside what the type adds. A delivery whose
    event is gone is `failed` and left out. Returns the deliveries to send, bodies set."""
    missing = [d for d in deliveries if not d.body]
    if not missing:
        return deliveries
    events = {event.id: event_data(event) for event in _events_of(missing)}
    gone = [d.pk for d in missing if d.event_id not in events]
    if gone:
        WebhookDelivery.objects.filter(pk__in=gone).update(
            status=WebhookDeliveryStatus.FAILED,
            completed_at=now,
            claimed_at=None,
            last_error=EVENT_GONE,
        )
    built = []
    for delivery in missing:
        if delivery.event_id in events:
            delivery.body = body(
                delivery_id=delivery.pk,
                type=delivery.type,
                created=delivery.created_at,
                organization=organization,
                data={"event": events[delivery.event_id], **delivery.extra},
            )
            built.append((delivery.pk, delivery.body))
    if built:
        source, params = dialect.rows([("did", "uuid"), ("bd", "text")], built)
        table = WebhookDelivery._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(
                f"""UPDATE "{table}" SET "body" = v."bd" FROM {source}
                    WHERE "{table}"."id" = v."did" AND "{table}"."body" = ''""",  # noqa: S608
                params,
            )
    return [d for d in deliveries if d.pk not in set(gone)]


def delivery_send(
    connection: http.Connection, delivery: WebhookDelivery, secrets: list[str]
) -> http.Outcome:
    """One attempt: sign (at send time, with the live `secrets`) and POST."""
    raw = delivery.body.encode("utf-8")
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        ID_HEADER: delivery.webhook_event_id,
        HEADER: header_value(secrets, int(time.time()), raw),
    }
    return connection.post(raw, headers, timeout=TIMEOUT_SECONDS)


def claim_send(claim: Claim, *, now: datetime | None = None) -> list[http.Outcome]:
    """Send the claim's deliveries in order, over one connection; stop at the first that got no
    answer at all (a time-out, a refused connection: the next ones would most likely wait as
    long) or once half the lease is spent. The outcomes of those sent, in order; the rest are
    released by `claim_record`."""
    try:
        secrets = signing_secrets(claim.endpoint, now=now)  # decrypted once for the claim
    except Exception as error:  # a SECRET_KEY changed without its fallback: nothing can sign
        logger.exception("webhook endpoint %s: its secret cannot be read", claim.endpoint.public_id)
        refused = http.Outcome(
            None, "", f"The signing secret cannot be read ({type(error).__name__}): rotate it", 0.0
        )
        return [refused] * len(claim.deliveries)
    started = time.monotonic()
    budget = settings.BIGMIND_WEBHOOK_CLAIM_LEASE_SECONDS / 2
    outcomes: list[http.Outcome] = []
    connection = http.Connection(
        claim.endpoint.url, allow_private=settings.BIGMIND_WEBHOOK_ALLOW_PRIVATE_NETWORKS
    )
    try:
        for delivery in claim.deliveries:
            try:
                outcome = delivery_send(connection, delivery, secrets)
            except Exception as error:
                # Recorded as a failed attempt (retried, then failed), never left claimed: a
                # row that raised every time would otherwise hold up the endpoint for good.
                logger.exception("webhook delivery %s: the attempt raised", delivery.pk)
                connection.close()
                outcome = http.Outcome(None, "", f"Internal error: {type(error).__name__}", 0.0)
            outcomes.append(outcome)
            if outcome.status_code is None or time.monotonic() - started > budget:
                break
    finally:
        connection.close()
    return outcomes


def retry_delay(attempts: int) -> float:
    """Seconds before the retry that follows attempt number `attempts` ("equal jitter")."""
    return backoff_delay(
        attempts,
        base=settings.BIGMIND_WEBHOOK_RETRY_BACKOFF_SECONDS,
        cap=settings.BIGMIND_WEBHOOK_RETRY_BACKOFF_MAX_SECONDS,
    )


_RESULT_COLUMNS = [
    ("did", "uuid"),
    ("st", "text"),
    ("nxt", "timestamptz"),
    ("done", "timestamptz"),
    ("code", "integer"),
    ("err", "text"),
    ("excerpt", "text"),
]


def claim_record(
    claim: Claim, outcomes: list[http.Outcome], *, now: datetime | None = None
) -> list[str]:
    """Write the outcomes (one per delivery, in order; the deliveries past them were not sent
    and are released), fenced on the claim. Returns each sent delivery's new status, "" where
    the claim was lost (another sender took the delivery after the lease)."""
    now = now or timezone.now()
    retry_for = timedelta(seconds=settings.BIGMIND_WEBHOOK_RETRY_FOR_SECONDS)
    rows: list[tuple[Any, ...]] = []
    statuses: list[str] = []
    status: str
    soonest: float | None = None
    for delivery, outcome in zip(claim.deliveries, outcomes, strict=False):
        done: datetime | None = now
        next_at: datetime | None = None
        if outcome.succeeded:
            status = WebhookDeliveryStatus.SUCCEEDED
        else:
            delay = retry_delay(delivery.attempts)
            if now + timedelta(seconds=delay) > delivery.created_at + retry_for:
                status = WebhookDeliveryStatus.FAILED
            else:
                status, done = WebhookDeliveryStatus.PENDING, None
                next_at = now + timedelta(seconds=delay)
                soonest = delay if soonest is None else min(soonest, delay)
        statuses.append(status)
        rows.append(
            (
                delivery.pk,
                status,
                next_at,
                done,
                outcome.status_code,
                # PostgreSQL's text cannot hold NUL; a receiver's answer may.
                outcome.error.replace("\x00", "\ufffd"),
                outcome.excerpt.replace("\x00", "\ufffd"),
            )
        )
    unsent = [d.pk for d in claim.deliveries[len(outcomes) :]]
    with transaction.atomic():
        moved = _results_write(claim, rows, now) if rows else set()
        if unsent:
            WebhookDelivery.objects.filter(
                pk__in=unsent, status=WebhookDeliveryStatus.PENDING, claimed_at=claim.token
            ).update(claimed_at=None, attempts=F("attempts") - 1)
    # After the results, in a statement of its own: a claim locks the endpoint, then deliveries;
    # doing both here in the other order could deadlock with it.
    if moved:
        _endpoint_health(claim.endpoint, outcomes, now=now)
    for delivery, outcome, status in zip(claim.deliveries, outcomes, statuses, strict=False):
        if delivery.pk not in moved:
            continue
        metrics.webhook_attempted(
            type=delivery.type,
            outcome=status if status != WebhookDeliveryStatus.PENDING else "retrying",
            seconds=outcome.seconds,
            since_created=(now - delivery.created_at).total_seconds(),
        )
    if moved and soonest is not None and soonest <= DELAYED_MESSAGE_MAX_SECONDS:
        transaction.on_commit(partial(_wake_later, claim.endpoint.pk, soonest))
    return [
        status if d.pk in moved else ""
        for d, status in zip(claim.deliveries, statuses, strict=False)
    ]


def _results_write(claim: Claim, rows: list[tuple[Any, ...]], now: datetime) -> set[Any]:
    """One UPDATE for the claim's results, fenced on its token; the ids it moved."""
    source, params = dialect.rows(_RESULT_COLUMNS, rows)
    table = WebhookDelivery._meta.db_table
    sql = f"""
        UPDATE "{table}" SET "status" = v."st", "next_attempt_at" = v."nxt",
            "completed_at" = v."done", "last_status_code" = v."code", "last_error" = v."err",
            "response_excerpt" = v."excerpt", "last_attempt_at" = %s, "claimed_at" = NULL
        FROM {source}
        WHERE "{table}"."id" = v."did" AND "{table}"."status" = %s
          AND "{table}"."claimed_at" = %s
        RETURNING "{table}"."id"
    """  # noqa: S608 - only model metadata is interpolated
    with connection.cursor() as cursor:
        cursor.execute(
            sql,
            [
                dialect.datetime_value(now),
                *params,
                WebhookDeliveryStatus.PENDING,
                dialect.datetime_value(claim.token),
            ],
        )
        return {dialect.uuid_read(row[0]) for row in cursor.fetchall()}


def _endpoint_health(
    endpoint: WebhookEndpoint, outcomes: list[http.Outcome], *, now: datetime
) -> None:
    """A success ends the endpoint's run of failures; failures start one, or, once it has
    lasted BIGMIND_WEBHOOK_DISABLE_AFTER_SECONDS, disable the endpoint with the reason."""
    rows = WebhookEndpoint.objects.filter(pk=endpoint.pk)
    if any(o.succeeded for o in outcomes):
        if endpoint.failing_since is not None:
            rows.filter(failing_since__isnull=False).update(failing_since=None)
        return
    if endpoint.failing_since is None:
        rows.filter(failing_since__isnull=True).update(failing_since=now)
    cutoff = now - timedelta(seconds=settings.BIGMIND_WEBHOOK_DISABLE_AFTER_SECONDS)
    since = endpoint.failing_since or now
    if since > cutoff:
        return
    reason = (
        f"Disabled on {now:%Y-%m-%d %H:%M} UTC: every delivery failed since "
        f"{since:%Y-%m-%d %H:%M} UTC (last: {outcomes[-1].error})"
    )[:500]
    if endpoint_disable(endpoint, failing_before=cutoff, reason=reason):
        logger.warning("webhook endpoint %s disabled: %s", endpoint.public_id, reason)


def endpoint_drain(*, endpoint_id: int, time_budget: float | None) -> int:
    """Send the endpoint's due deliveries, a claim at a time, until none is due, the cap of
    senders is reached or the time budget is spent (then a new wake-up carries on). Returns how
    many were sent."""
    _wake_started(endpoint_id)
    started = time.monotonic()
    budget = time_budget or 30.0
    sent = 0
    while True:
        if time.monotonic() - started > budget:
            endpoints_wake(endpoint_ids=[endpoint_id])
            return sent
        claim = deliveries_claim(endpoint_id=endpoint_id)
        if claim is None:
            return sent
        outcomes = claim_send(claim)
        claim_record(claim, outcomes)
        sent += len(outcomes)


# --- Staff and API actions -----------------------------------------------------------------------


def delivery_retry(*, delivery: WebhookDelivery, now: datetime | None = None) -> WebhookDelivery:
    """Send a delivery again now, whatever its status (a failed one gets one more attempt; a
    succeeded one is sent again, same id and body, for a receiver that lost it)."""
    now = now or timezone.now()
    with transaction.atomic():
        # A claim in flight is left alone: its result is written as usual (fenced on its
        # token), and it stands for this retry.
        WebhookDelivery.objects.filter(pk=delivery.pk).update(
            status=WebhookDeliveryStatus.PENDING, next_attempt_at=now, completed_at=None
        )
        deliveries_committed(endpoint_ids=[delivery.endpoint_id])
    delivery.refresh_from_db()
    return delivery


class EndpointDisabled(ApplicationError):
    status_code = 409
    code = "webhook_endpoint_disabled"


def ping_create(*, endpoint: WebhookEndpoint, now: datetime | None = None) -> WebhookDelivery:
    """A `ping` delivery to this endpoint, sent through the queue like any other. A disabled
    endpoint is sent nothing, so it is refused one: enable it first."""
    if not endpoint.enabled:
        raise EndpointDisabled(
            "This webhook endpoint is disabled; enable it before sending it a test event"
        )
    now = now or timezone.now()
    delivery_id = uuid7()
    with transaction.atomic():
        delivery = WebhookDelivery.objects.create(
            id=delivery_id,
            organization_id=endpoint.organization_id,
            endpoint=endpoint,
            type=WebhookEventType.PING,
            body=body(
                delivery_id=delivery_id,
                type=WebhookEventType.PING,
                created=now,
                organization=endpoint.organization.slug,
                data={"webhook_endpoint": {"id": endpoint.public_id, "url": endpoint.url}},
            ),
            next_attempt_at=now,
        )
        deliveries_committed(endpoint_ids=[endpoint.pk])
    return delivery


# --- The sweep ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliverySweep:
    woken: int
    orphans_dropped: int


def deliveries_sweep(*, now: datetime | None = None) -> DeliverySweep:
    """Wake every enabled endpoint with due deliveries; drop pending deliveries whose endpoint
    was deleted while they were written (they have nowhere to go)."""
    now = now or timezone.now()
    # One index probe per enabled endpoint, whatever the backlog of any of them.
    due = WebhookEndpoint.objects.filter(enabled=True).filter(
        Exists(WebhookDelivery.objects.filter(_claimable(now), endpoint_id=OuterRef("pk")))
    )
    woken = endpoints_wake(endpoint_ids=list(due.values_list("pk", flat=True)), force=True)
    orphans = (
        WebhookDelivery.objects.filter(status=WebhookDeliveryStatus.PENDING)
        .exclude(endpoint_id__in=WebhookEndpoint.objects.values("pk"))
        .values_list("pk", flat=True)[: settings.BIGMIND_SWEEP_BATCH_SIZE]
    )
    dropped, _ = WebhookDelivery.objects.filter(pk__in=list(orphans)).delete()
    if woken or dropped:
        logger.info("webhooks sweep: %d endpoint(s) woken, %d orphan(s) dropped", woken, dropped)
    return DeliverySweep(woken=woken, orphans_dropped=dropped)
