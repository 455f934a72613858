"""The control plane's admin: organizations and memberships, signals with their schema versions,
API keys, the audit log. One module per model family; importing the package registers them all
(Django's admin autodiscovery imports `signals_app.admin`). The organization scoping they share
is the kernel's (bigmind/admin_tenancy.py)."""

from signals_app.admin import api_keys, audit, organizations, signal_admin

__all__ = ["api_keys", "audit", "organizations", "signal_admin"]
