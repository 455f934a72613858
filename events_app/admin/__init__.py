"""The data plane's admin: read-only lists and pages of what the API stored and the pipeline
derived (events, CRM records, insights, aggregates, states, rejections), each cut to the user's
organization, and the actions staff take on them (reprocess, replay).

- `registrations`: the model admins, registered with the admin site on import;
- `display`: how values are written (list cells, read-only fields, a record's profile);
- `selectors`: what the lists read beyond their own rows (filter choices, the organization in
  view, the rejections only counted);
- `actions`: reprocess events, replay rejections, the notice of rejections only counted;
- `signals`: signals_app's signal admin with the columns read from the events;
- `webhooks` (with `webhook_forms`) and `webhook_deliveries`: webhook endpoints (the secret
  shown once, rotation, a test event) and their deliveries (the request and response, retry).

The dashboard (/admin/dashboard/) is its own package, events_app.dashboard.
"""

from __future__ import annotations

# Django's admin autodiscovery imports this package: importing the model admins registers them.
from events_app.admin import registrations as registrations
from events_app.admin import signals as signals
from events_app.admin import webhook_deliveries as webhook_deliveries
from events_app.admin import webhooks as webhooks
