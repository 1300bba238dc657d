"""The one price table: credits = max(minimum, ceil(rate x units)), units from the task registry."""

from __future__ import annotations

import pytest

from api.jobs.pricing import RATES, price
from inference.params import CoverParams, GenerateParams, MidiParams, RepaintParams, SeparateParams, SongParams
from inference.registry import TASKS


def test_every_task_has_a_rate_in_its_registry_unit() -> None:
    assert set(RATES) == set(TASKS)
    for task, rate in RATES.items():
        assert rate.unit == TASKS[task].price_unit and rate.minimum >= 1 and rate.rate > 0


@pytest.mark.parametrize(
    ("seconds", "credits"),
    [(1.0, 2), (30.0, 2), (60.0, 4), (61.0, 5), (180.00000001, 12), (1200.0, 80)],
)
def test_audio_price_rounds_up_per_minute_with_a_minimum(seconds: float, credits: int) -> None:
    assert price("separate", SeparateParams(), seconds) == credits


def test_generation_is_priced_per_variant_second() -> None:
    assert price("generate", GenerateParams(prompt="x", duration_s=10, variants=3), None) == 15
    assert price("generate", GenerateParams(prompt="x", duration_s=1, variants=1), None) == RATES["generate"].minimum
    assert price("midi", MidiParams(), 0.5) == RATES["midi"].minimum


def test_generation_prices_its_diffusion_steps() -> None:
    # SPEC section 2: variants x seconds x steps / default steps; 250 steps costs 2.5x the default 100.
    default_steps = GenerateParams.model_fields["steps"].default
    assert default_steps == 100
    assert price("generate", GenerateParams(prompt="x", duration_s=10, variants=3, steps=100), None) == 15
    assert price("generate", GenerateParams(prompt="x", duration_s=10, variants=3, steps=250), None) == 38  # 37.5 up
    assert price("generate", GenerateParams(prompt="x", duration_s=40, variants=4, steps=250), None) == 200
    assert price("generate", GenerateParams(prompt="x", duration_s=10, variants=2, steps=50), None) == 5
    assert price("generate", GenerateParams(prompt="x", duration_s=10, variants=1, steps=1), None) == 2  # minimum


def test_separation_prices_each_pass_it_makes() -> None:
    three_minutes = 180.0
    assert price("separate", SeparateParams(), three_minutes) == 12
    assert price("separate", SeparateParams(model="htdemucs", shifts=0), three_minutes) == 12  # still one pass
    assert price("separate", SeparateParams(model="htdemucs", shifts=5), three_minutes) == 60
    assert price("separate", SeparateParams(model="htdemucs_ft", shifts=2), three_minutes) == 96


def test_songs_are_priced_per_generated_minute_variant_and_step() -> None:
    # rate 4 per generated minute x variants x steps / 8 (the turbo default).
    assert price("song", SongParams(prompt="x", duration_s=60), None) == 4
    assert price("song", SongParams(prompt="x", duration_s=180, variants=4), None) == 48
    assert price("song", SongParams(prompt="x", duration_s=180, variants=4, steps=16), None) == 96
    assert price("song", SongParams(prompt="x", duration_s=10), None) == RATES["song"].minimum
    # A cover generates as long as its input, per variant; a repaint regenerates (and pays for) the whole input.
    assert price("cover", CoverParams(prompt="x", variants=2), 150.0) == 20
    assert price("repaint", RepaintParams(start_s=10, end_s=20), 150.0) == 10
    assert price("repaint", RepaintParams(start_s=10, end_s=20, steps=4), 150.0) == 5
