"""HTTP only, one module per resource; `api.main` collects their routers under /v1. Each handler reads the request,
makes one call (into `api.jobs`, `db` or `api.background`) and maps the result to a status."""
