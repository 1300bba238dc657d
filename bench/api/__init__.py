"""API benchmark: submit and status-poll throughput and latency over real HTTP (see bench/api/run.py)."""
