"""The admin dashboard (/admin/dashboard/): per organization, each signal's events by hour and
by day (ingested, completed, failed, queued, rejected), the queue backlog and processing latency.

- `selectors`: the numbers, in a handful of bounded queries per page;
- `charts`: inline SVG drawn from those numbers (pure functions);
- `views`: the chooser and the organization's page (templates/admin/dashboard.html);
- `urls`: the routes, included by bigmind/urls.py.
"""
