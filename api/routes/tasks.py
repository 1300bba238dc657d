"""GET /v1/tasks: every task with its params schema, price, input limits and models (with licences). Public."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.deps import State
from api.jobs.inputs import SUPPORTED_FORMATS
from api.jobs.pricing import RATES
from api.jobs.request import deployment_defaults, install_command, lock_entries, model_enabled, model_installed
from api.settings import Settings
from inference.registry import TASKS, PriceUnit, TaskSpec

router = APIRouter(tags=["jobs"])


class Price(BaseModel):
    rate: float = Field(description="Credits per unit.")
    unit: PriceUnit
    minimum: int


class PublishedSdr(BaseModel):
    sdr: dict[str, float] = Field(description="Signal-to-distortion ratio in dB per stem (higher is better).")
    benchmark: str
    source: str = Field(description="Where the figures are published.")


class ModelInfo(BaseModel):
    key: str
    licence: str
    licence_note: str
    licence_url: str = Field(description="Where the weights' terms are stated (empty when only `source` says).")
    commercial_use: bool
    restriction: str = Field(description="Terms beyond `commercial_use` a paid service must respect (a revenue cap).")
    restricted: bool = Field(
        description="Non-commercial or restricted weights: refused in production unless the operator allows them"
        " (STUDIO_ALLOW_NONCOMMERCIAL_MODELS); local mode allows them."
    )
    licence_unresolved: bool
    enabled: bool = Field(
        description="Whether this deployment accepts jobs for the model; a submit for one that is not answers 422"
        " `model_not_enabled` before any hold."
    )
    installed: bool = Field(
        description="Whether its weights are installed here; a submit for a model that is not answers 422"
        " `model_not_installed`."
    )
    install: str = Field(description="The operator's command that installs its weights.")
    source: str
    stems: list[str] = Field(description="A separation model's output stems (empty for other tasks).")
    published_sdr: PublishedSdr | None = Field(
        description="A separation model's published quality: SDR in dB per stem, the benchmark and where it is "
        "published (null when none is recorded)."
    )


class LibraryInfo(BaseModel):
    name: str = Field(description="The PyPI package that does the work (tasks without weights).")
    version: str
    licence: str = Field(description="SPDX identifier.")
    role: str


class Limits(BaseModel):
    max_upload_bytes: int
    max_duration_s: float
    max_channels: int
    max_sample_rate: int
    formats: list[str]


class TaskInfo(BaseModel):
    task: str
    description: str
    input_kind: Literal["audio", "text", "tracks"] = Field(
        description="audio: one input file; text: none; tracks: none, the params name your earlier jobs' outputs."
    )
    params_schema: dict[str, Any]
    price: Price
    limits: Limits
    models: list[ModelInfo] = Field(description="Weights the task runs on (empty for DSP tasks).")
    model_choices: dict[str, str] = Field(
        description="Each value of the `model` param and the key (in `models`) of the weights it selects; empty for"
        " tasks without a `model` param."
    )
    libraries: list[LibraryInfo] = Field(description="Libraries a weight-less task runs on, with their licences.")
    extra_inputs: list[str] = Field(description="Named second inputs the task accepts (e.g. `reference`).")


class TaskList(BaseModel):
    object: Literal["list"] = "list"
    data: list[TaskInfo]


def _model_choices(spec: TaskSpec) -> dict[str, str]:
    """`model` param value -> models.lock key, through the task's own mapping (bare whisper names included)."""
    field = spec.params_model.model_json_schema().get("properties", {}).get("model", {})
    if not spec.needs_weights or "enum" not in field:
        return {}
    return {value: spec.model_key(spec.params_model.model_construct(model=value)) for value in field["enum"]}


def _params_schema(schema: dict[str, Any], task: str, settings: Settings) -> dict[str, Any]:
    for name, value in deployment_defaults(task, settings).items():
        schema["properties"][name]["default"] = value
    return schema


@router.get("/tasks", response_model=TaskList, summary="Tasks, params, prices, limits and model licences")
async def list_tasks(state: State) -> TaskList:
    """Public. Every task with its params JSON schema, price, input limits and the models (with licences) it uses."""
    settings = state.settings
    limits = Limits(
        max_upload_bytes=settings.max_upload_bytes,
        max_duration_s=settings.max_duration_seconds,
        max_channels=settings.max_audio_channels,
        max_sample_rate=settings.max_sample_rate,
        formats=list(SUPPORTED_FORMATS),
    )
    data = []
    for spec in TASKS.values():
        rate = RATES[spec.task]
        models = [
            ModelInfo(
                key=entry.key,
                licence=entry.licence,
                licence_note=entry.licence_note,
                licence_url=entry.licence_url,
                commercial_use=entry.commercial_use,
                restriction=entry.restriction,
                restricted=entry.restricted,
                licence_unresolved=entry.licence_unresolved,
                enabled=model_enabled(entry, settings),
                installed=model_installed(entry, settings),
                install=install_command(entry.key),
                source=entry.source,
                stems=list(entry.stems),
                published_sdr=PublishedSdr(sdr=entry.sdr, benchmark=entry.sdr_benchmark, source=entry.sdr_source)
                if entry.sdr
                else None,
            )
            for entry in lock_entries().values()
            if entry.task == spec.lock_task
        ]
        data.append(
            TaskInfo(
                task=spec.task,
                description=spec.description,
                input_kind=spec.input_kind,
                params_schema=_params_schema(spec.params_model.model_json_schema(), spec.task, settings),
                price=Price(rate=rate.rate, unit=rate.unit, minimum=rate.minimum),
                limits=limits,
                models=models,
                model_choices=_model_choices(spec),
                libraries=[
                    LibraryInfo(name=lib.name, version=lib.version, licence=lib.licence, role=lib.role)
                    for lib in spec.libraries
                ],
                extra_inputs=list(spec.extra_inputs),
            )
        )
    return TaskList(data=data)
