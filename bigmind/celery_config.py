"""Celery's settings: the CELERY_* names of the Django settings, copied into this module under
Celery's own (new-style, lowercase) names: CELERY_TASK_SERIALIZER becomes task_serializer.

Celery reads its configuration on every publish (routes, serializer, retry policy...). Read
through `django.conf:settings`, each lookup goes through Django's LazySettings proxy; measured
at about 0.25 ms of CPU per publish on the ingest path. A plain module answers the same
lookups at attribute speed. Settings are read once, at the first Celery use in a process.

Why not `config_from_object(..., namespace="CELERY")` on the CELERY_* names: seven of them
(CELERY_TASK_SERIALIZER, CELERY_TIMEZONE, CELERY_RESULT_BACKEND...) are also Celery 3's old
setting names, and a worker then prints a CDeprecationWarning for each at every start (issue
#12), namespace or not. Under the new names Celery sees nothing old.
"""

from __future__ import annotations

from celery.app.defaults import SETTING_KEYS as _SETTING_KEYS
from django.conf import settings as _settings
from django.core.exceptions import ImproperlyConfigured as _ImproperlyConfigured

from bigmind.queues import quorum_conf as _quorum_conf
from bigmind.queues import task_queues as _task_queues
from bigmind.startup import configuration_error_exit as _configuration_error_exit
from bigmind.startup import settings_load_or_exit as _settings_load_or_exit

_PREFIX = "CELERY_"
# Read by Celery's Django fixup under this exact name (celery/fixups/django.py); not a Celery
# setting, so it keeps its Django name.
_KEPT_AS_IS = frozenset({"CELERY_DB_REUSE_MAX"})


def celery_settings(source: object) -> dict[str, object]:
    """Celery's configuration from the CELERY_* attributes of `source` (the Django settings).

    A CELERY_* name that is no Celery setting is refused: Celery would ignore it silently, so a
    misspelt one (CELERY_TASK_ACK_LATE) would look set and do nothing.
    """
    values: dict[str, object] = {}
    for name in dir(source):
        if not name.startswith(_PREFIX):
            continue
        if name in _KEPT_AS_IS:
            values[name] = getattr(source, name)
            continue
        key = name[len(_PREFIX) :].lower()
        if key not in _SETTING_KEYS:
            raise _ImproperlyConfigured(
                f"{name} is not a Celery setting (Celery's settings are listed at "
                "https://docs.celeryq.dev/en/stable/userguide/configuration.html)"
            )
        values[key] = getattr(source, name)
    return values


# First read by `celery worker` / `celery beat` (the web has its settings loaded by then): a
# setting missing or invalid is one line and exit status 1 there, not a traceback.
_settings_load_or_exit("celery")
try:
    globals().update(celery_settings(_settings))
except _ImproperlyConfigured as _exc:
    _configuration_error_exit("celery", _exc)
# Declared explicitly so operators can run dedicated workers per queue (`celery -A bigmind
# worker -Q events.process`); RabbitMQ quorum queues with CELERY_QUORUM_QUEUES=true.
task_queues = _task_queues(quorum=_settings.BIGMIND_QUORUM_QUEUES)
if _settings.BIGMIND_QUORUM_QUEUES:
    globals().update(_quorum_conf())
