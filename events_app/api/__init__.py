"""The /v1 HTTP API: one module per resource, each with its views and the shapes they answer.

- `events`: POST /v1/events (ingest, answered before DRF) and GET /v1/events, /v1/events/<id>;
- `batch`, `validate`: POST /v1/events/batch and /v1/events/validate;
- `rejections`: GET /v1/rejections;
- `signals`: GET /v1/signals, /v1/signals/<slug>, /v1/signals/<slug>/schemas/<version>;
- `records`: GET /v1/records/<type>/<id>;
- `openapi`: the document (/v1/openapi.json, .yaml) and its docs page.

Shared pieces are public: `common` (the base view, the body reader, the envelope, the query
parameters every list takes) and `schema` (what the OpenAPI document adds around the shapes:
error answers, headers, links). Views are thin: parse, call one ingest service or selector,
shape the answer. Dependencies run one way: api -> ingest, selectors -> models.
"""
