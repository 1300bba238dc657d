"""Model code for Audio Studio. Imports nothing from `api` or `db`: engines run the same under any worker."""
