"""A job's life in the order it happens (request -> submit -> dispatch -> [worker] -> settle; cancel, outbox, view).
Never imports fastapi or starlette (import-linter contract in pyproject.toml)."""
