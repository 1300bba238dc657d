"""GET /v1/tasks: every task with its params schema, price, input limits and models (with licences). Public."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.deps import State
from api.jobs.inputs import SUPPORTED_FORMATS
from api.jobs.pricing import RATES
from api.jobs.request import lock_entries, model_enabled, model_installed
from inference.registry import TASKS

router = APIRouter(tags=["jobs"])


class Price(BaseModel):
    rate: float = Field(description="Credits per unit.")
    unit: Literal["audio_minute", "variant_second"]
    minimum: int


class PublishedSdr(BaseModel):
    sdr: dict[str, float] = Field(description="Signal-to-distortion ratio in dB per stem (higher is better).")
    benchmark: str
    source: str = Field(description="Where the figures are published.")


class ModelInfo(BaseModel):
    key: str
    licence: str
    licence_note: str
    commercial_use: bool
    licence_unresolved: bool
    enabled: bool = Field(description="Whether this deployment accepts jobs for the model (its licence allows it).")
    installed: bool = Field(
        description="Whether its weights are installed here; a submit for a model that is not answers 422"
        " `model_not_installed`."
    )
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
    input_kind: Literal["audio", "text"]
    params_schema: dict[str, Any]
    price: Price
    limits: Limits
    models: list[ModelInfo] = Field(description="Weights the task runs on (empty for DSP tasks).")
    libraries: list[LibraryInfo] = Field(description="Libraries a weight-less task runs on, with their licences.")
    extra_inputs: list[str] = Field(description="Named second inputs the task accepts (e.g. `reference`).")


class TaskList(BaseModel):
    object: Literal["list"] = "list"
    data: list[TaskInfo]


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
                commercial_use=entry.commercial_use,
                licence_unresolved=entry.licence_unresolved,
                enabled=model_enabled(entry, state),
                installed=model_installed(entry, settings),
                source=entry.source,
                stems=list(entry.stems),
                published_sdr=PublishedSdr(sdr=entry.sdr, benchmark=entry.sdr_benchmark, source=entry.sdr_source)
                if entry.sdr
                else None,
            )
            for entry in lock_entries().values()
            if entry.task == spec.task
        ]
        data.append(
            TaskInfo(
                task=spec.task,
                description=spec.description,
                input_kind=spec.input_kind,
                params_schema=spec.params_model.model_json_schema(),
                price=Price(rate=rate.rate, unit=rate.unit, minimum=rate.minimum),
                limits=limits,
                models=models,
                libraries=[
                    LibraryInfo(name=lib.name, version=lib.version, licence=lib.licence, role=lib.role)
                    for lib in spec.libraries
                ],
                extra_inputs=list(spec.extra_inputs),
            )
        )
    return TaskList(data=data)
