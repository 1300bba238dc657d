"""Postgres: the embedded local server, migrations, the credit ledger and the queries the API and workers share."""
