"""The control plane's admin: organizations and memberships, signals with their schema versions,
API keys. One module per model family; importing the package registers them all (Django's
admin autodiscovery imports `signals_app.admin`). The organization scoping they share is the
kernel's (bigmind/admin_tenancy.py)."""

# signal_admin first, on purpose: it is what first imports jsonschema, whose import builds 39
# Lark parsers (rfc3987_syntax, deeply recursive). Reached through api_keys → services →
# compatibility instead, five imports deeper, that build ran at a call depth where CPython
# 3.11 maps and unmaps a frame-stack chunk over and over: 500,000 page faults, and a gunicorn
# worker booting in 20 s instead of 5 (test_gunicorn_workers_report_together_in_multiprocess_mode).
from signals_app.admin import signal_admin  # noqa: I001
from signals_app.admin import api_keys, organizations

__all__ = ["api_keys", "organizations", "signal_admin"]
