"""All configuration, from the environment (Modal Secrets in production). Documented in README.md's table."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from inference.params import DEFAULT_TRANSCRIBE_MODEL, LOCAL_TRANSCRIBE_MODEL, TRANSCRIBE_MODELS


class CreditPack(BaseSettings):
    id: str
    name: str
    credits: int = Field(gt=0)
    amount: int = Field(gt=0, description="Price in the currency's smallest unit (cents).")
    currency: str = "usd"


DEFAULT_PACKS = [
    CreditPack(id="starter", name="Starter: 500 credits", credits=500, amount=500),
    CreditPack(id="studio", name="Studio: 3,000 credits", credits=3000, amount=2500),
    CreditPack(id="label", name="Label: 15,000 credits", credits=15000, amount=10000),
]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STUDIO_", extra="ignore")

    # Where things run (SPEC section 5). Unset DATABASE_URL = embedded Postgres under state_dir.
    database_url: str | None = Field(default=None, validation_alias=AliasChoices("DATABASE_URL"))
    # Supabase's transaction pooler (port 6543) has no prepared statements, and cannot carry LISTEN: the events
    # hub and the webhook deliverer then need a direct or session-mode URL.
    database_pooler: bool = False
    database_listen_url: str | None = Field(default=None, validation_alias=AliasChoices("DATABASE_LISTEN_URL"))
    state_dir: Path = Path(".state")
    weights_dir: Path | None = None  # default: state_dir / "weights"
    public_base_url: str = "http://127.0.0.1:8000"
    secret_key: str | None = None  # signs local download URLs and local tokens; generated into state_dir if unset

    # Auth (Supabase access tokens and API keys)
    supabase_url: str | None = Field(default=None, validation_alias=AliasChoices("SUPABASE_URL"))
    supabase_jwt_secret: str | None = Field(default=None, validation_alias=AliasChoices("SUPABASE_JWT_SECRET"))
    supabase_service_role_key: str | None = Field(
        default=None, validation_alias=AliasChoices("SUPABASE_SERVICE_ROLE_KEY")
    )
    # Public key that supabase-js in the studio signs users in with (GET /v1/config hands it out).
    supabase_anon_key: str | None = Field(default=None, validation_alias=AliasChoices("SUPABASE_ANON_KEY"))
    jwt_algorithms: list[str] = ["ES256", "RS256"]  # accepted algorithms; HS256 only with supabase_jwt_secret
    jwt_audience: str = "authenticated"
    jwks_cache_seconds: int = 600  # Supabase caches its key set up to ~20 min; we refresh sooner

    # Storage
    storage_backend: Literal["local", "supabase"] = "local"
    inputs_bucket: str = "inputs"
    outputs_bucket: str = "outputs"
    signed_url_seconds: int = 3600
    output_retention_seconds: int = 7 * 24 * 3600

    # Jobs
    dispatcher: Literal["local", "modal"] = "local"
    local_workers: int = 1
    # Local workers are woken by NOTIFY when a job is handed to them; this poll only bounds a missed notification.
    local_worker_poll_seconds: float = 5.0
    engines: Literal["real", "builtin"] = "real"  # builtin: the small DSP engine, for tests and demos without weights
    # Weights that are non-commercial or restricted (a revenue cap; models.lock `commercial_use = false` or
    # `restriction`). Unset: allowed in local mode (dispatcher local), refused in production (dispatcher modal).
    allow_noncommercial_models: bool | None = None
    # Modal: the API reloads the weights Volume this often, and before refusing a submit `model_not_installed`
    # (at most once per min gap), so models pulled after the container started are seen.
    weights_reload_seconds: float = Field(default=60.0, gt=0)
    weights_reload_min_gap_seconds: float = Field(default=5.0, ge=0)
    max_upload_bytes: int = 200 * 1024 * 1024
    max_body_bytes: int = 1024 * 1024  # every body but the uploads' (api.request_guard)
    # Resumable (tus 1.0) uploads, `input_upload` of a job: the cap per upload, how long an unused one is kept, and
    # the size above which the CLI and the studio upload that way instead of in the submit's multipart body.
    max_resumable_upload_bytes: int = Field(default=2 * 1024**3, gt=0)
    upload_expiry_seconds: int = Field(default=24 * 3600, gt=0)
    resumable_upload_threshold_bytes: int = Field(default=32 * 1024 * 1024, ge=0)
    # A body must arrive within the total, with no pause past the idle limit (a trickling client holds temp disk).
    body_read_idle_seconds: float = 30.0
    body_read_timeout_seconds: float = 900.0
    max_duration_seconds: float = 20 * 60
    max_audio_channels: int = 8
    max_sample_rate: int = 192_000
    input_fetch_timeout_seconds: float = 30.0
    max_url_fetches_per_user: int = 4  # input URL downloads at once per user, per API process (429 beyond)
    # Local development and tests fetch input_url from http://127.0.0.1; production allows only public https.
    input_url_allow_insecure: bool = False
    # A job's deadline: from submit, and renewed at every claim so queue time never eats an attempt's run time.
    job_deadline_seconds: int = 2 * 3600
    # Claims per job: the claim past this fails it `too_many_attempts` (a job that always crashes its worker would
    # otherwise be retried by Modal with backoff until its deadline).
    max_attempts: int = 3
    heartbeat_timeout_seconds: int = 300
    # Local workers: an attempt may run max(this, priced seconds x its task's worst_realtime_factor) from its claim
    # (inference/registry.py); past that its engine is taken to be hung, the worker process is killed and replaced
    # and the job fails `engine_timeout`. The floor covers loading a model on a worker's first job.
    engine_timeout_floor_seconds: float = 600.0
    max_running_jobs_per_user: int = 2
    rate_limit_per_minute: int = 120
    # A quote with `input_url` downloads the input: it counts as this many requests against the rate limit.
    quote_fetch_rate_cost: int = 10
    # Presented credentials that fail, per client address, before that address is refused unchecked (429).
    failed_auth_per_minute: int = 30
    max_event_streams_per_user: int = 8  # open SSE streams per user, per API process
    prefer_wait_max_seconds: int = 60
    # POST /v1/audio/* answer within this many seconds (then 504 with the job id to poll): Modal cuts any web request
    # at 150 s with a 303 to a result URL, so the route must give its own answer first.
    audio_api_wait_seconds: float = Field(default=140.0, gt=0, lt=150)
    # The transcription model `whisper-1` stands for on POST /v1/audio/* (None: the deployment's default below).
    audio_api_whisper_1_model: str | None = None
    # The transcribe `model` when a job names none (GET /v1/tasks shows it as the schema's default). None: a GPU's
    # faster-whisper/large-v3-turbo in production, the wheel-shipped faster-whisper/tiny.en in local mode.
    default_transcribe_model: str | None = None
    idempotency_ttl_seconds: int = 24 * 3600
    # A claimed key is renewed while its submit runs; one not renewed for this long (its API process died) is free.
    idempotency_in_flight_lease_seconds: float = 60.0

    # Money
    welcome_credits: int = 100
    packs: list[CreditPack] = DEFAULT_PACKS
    stripe_secret_key: str | None = Field(default=None, validation_alias=AliasChoices("STRIPE_SECRET_KEY"))
    stripe_webhook_secret: str | None = Field(default=None, validation_alias=AliasChoices("STRIPE_WEBHOOK_SECRET"))
    stripe_api_base: str | None = None  # tests point the SDK at a local server
    checkout_success_url: str = "http://127.0.0.1:8000/billing/success?session_id={CHECKOUT_SESSION_ID}"
    checkout_cancel_url: str = "http://127.0.0.1:8000/billing/canceled"

    # Background loops in local mode (Modal runs the reaper and retention as Cron functions)
    reaper_interval_seconds: float = 60.0
    webhook_retry_horizon_seconds: int = 26 * 3600  # SPEC: retry for at least 24 h
    # Local development and tests deliver webhooks to http://127.0.0.1; production refuses http and private targets.
    webhook_allow_insecure_urls: bool = False
    # One delivery attempt (resolve, connect, send, read the status) ends by this deadline, however slowly the
    # receiver trickles bytes; a timeout is a failed attempt, retried with backoff.
    webhook_attempt_timeout_seconds: float = Field(default=15.0, gt=0)
    webhook_max_concurrent_attempts: int = Field(default=10, ge=1)  # per deliverer process
    webhook_max_attempts_per_user: int = Field(default=2, ge=1)  # per pass of a deliverer: one user's slow receiver

    @field_validator("default_transcribe_model", "audio_api_whisper_1_model")
    @classmethod
    def _a_transcription_model(cls, value: str | None) -> str | None:
        if value is not None and value not in TRANSCRIBE_MODELS:
            raise ValueError(f"{value!r} is not a transcription model; one of {', '.join(TRANSCRIBE_MODELS)}")
        return value

    @property
    def weights_path(self) -> Path:
        return self.weights_dir or self.state_dir / "weights"

    @property
    def production(self) -> bool:
        """A Modal deployment serving paying users; local mode (one machine, the local worker pool) is not."""
        return self.dispatcher == "modal"

    @property
    def restricted_models_allowed(self) -> bool:
        if self.allow_noncommercial_models is not None:
            return self.allow_noncommercial_models
        return not self.production

    @property
    def transcribe_model(self) -> str:
        """The transcribe `model` of a job that names none, and what `whisper-1` means unless set apart."""
        if self.default_transcribe_model is not None:
            return self.default_transcribe_model
        return DEFAULT_TRANSCRIBE_MODEL if self.production else LOCAL_TRANSCRIBE_MODEL

    @property
    def stripe_enabled(self) -> bool:
        return bool(self.stripe_secret_key)
