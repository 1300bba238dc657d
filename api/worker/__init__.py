"""What runs a job: `runner` (claim, run, store, settle) and `process` (the pool / Modal entry). Never loads the web
stack (import-linter contract in pyproject.toml; tests/test_import_graph.py)."""
