"""The Audio Studio HTTP API: FastAPI app, auth, jobs, billing, dispatch, storage and the job runner."""
