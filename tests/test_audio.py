"""inference.audio on real files written in every input format the SPEC accepts."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import soxr

from inference import audio
from inference.base import EngineError
from tests import hostile_audio as hostile

RATE = 44100
SECONDS = 2.0
FREQ = 440.0
AMPLITUDE = 0.5


def _sine(rate: int = RATE, seconds: float = SECONDS, channels: int = 2) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    tone = (AMPLITUDE * np.sin(2 * np.pi * FREQ * t)).astype(np.float32)
    return np.stack([tone] * channels)


def _write_pyav(path: Path, fmt: str, codec: str, signal: np.ndarray, rate: int) -> None:
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate, layout="stereo")
        frame_size = stream.codec_context.frame_size or 1024
        pts = 0
        for start in range(0, signal.shape[1], frame_size):
            chunk = np.ascontiguousarray(signal[:, start : start + frame_size])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
            frame.sample_rate, frame.pts, frame.time_base = rate, pts, Fraction(1, rate)
            pts += chunk.shape[1]
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def _make(kind: str, folder: Path) -> Path:
    signal = _sine()
    if kind == "m4a":
        path = folder / "tone.m4a"
        _write_pyav(path, "ipod", "aac", signal, RATE)
        return path
    if kind == "opus":
        path = folder / "tone.opus.ogg"
        _write_pyav(path, "ogg", "libopus", _sine(48000), 48000)
        return path
    spec = {
        "wav": ("WAV", "PCM_16"),
        "flac": ("FLAC", "PCM_24"),
        "mp3": ("MP3", "MPEG_LAYER_III"),
        "ogg": ("OGG", "VORBIS"),
    }[kind]
    path = folder / f"tone.{kind}"
    sf.write(str(path), signal.T, RATE, format=spec[0], subtype=spec[1])
    return path


FORMATS = ["wav", "flac", "mp3", "ogg", "opus", "m4a"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("formats")
    return {kind: _make(kind, folder) for kind in FORMATS}


def _dominant_hz(signal: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal))))
    return float(np.fft.rfftfreq(len(signal), 1 / rate)[np.argmax(spectrum)])


@pytest.mark.parametrize("kind", FORMATS)
def test_probe_reads_duration_rate_and_channels(files, kind):
    info = audio.probe(files[kind])
    assert info.duration_s == pytest.approx(SECONDS, abs=0.06)  # codec priming/padding only
    assert info.channels == 2
    assert info.sample_rate == (48000 if kind == "opus" else RATE)


@pytest.mark.parametrize("kind", FORMATS)
def test_decode_resamples_and_keeps_pitch_and_level(files, kind):
    mono16k = audio.decode(files[kind], sample_rate=16000, mono=True)
    assert mono16k.dtype == np.float32 and mono16k.shape[0] == 1
    assert mono16k.shape[1] == pytest.approx(16000 * SECONDS, abs=16000 * 0.06)
    middle = mono16k[0, 4000:-4000]  # away from codec edges
    assert _dominant_hz(middle, 16000) == pytest.approx(FREQ, abs=3)
    rms = float(np.sqrt(np.mean(middle**2)))
    assert rms == pytest.approx(AMPLITUDE / np.sqrt(2), rel=0.08)
    stereo = audio.decode(files[kind])
    assert stereo.shape[0] == 2 and np.allclose(stereo[0], stereo[1], atol=0.02)


def test_streaming_resample_has_no_seams(files):
    native = audio.decode(files["flac"])
    one_shot = soxr.resample(native.T, RATE, 48000, quality="HQ").T
    blocks = list(audio.iter_blocks(files["flac"], sample_rate=48000, block_seconds=0.13))
    assert len(blocks) > 10
    streamed = np.concatenate(blocks, axis=1)
    assert streamed.shape == one_shot.shape
    np.testing.assert_allclose(streamed, one_shot, atol=1e-5)


def test_blocks_without_resampling_concatenate_to_the_whole(files):
    whole = audio.decode(files["wav"])
    blocks = list(audio.iter_blocks(files["wav"], block_seconds=0.25))
    assert all(b.shape[1] <= 0.25 * RATE + 4096 for b in blocks)  # bounded: one block plus one codec frame
    np.testing.assert_array_equal(np.concatenate(blocks, axis=1), whole)
    reference, _ = sf.read(str(files["wav"]), dtype="float32")
    np.testing.assert_allclose(whole, reference.T, atol=1e-6)


def test_garbage_text_and_empty_inputs_get_clear_codes(tmp_path):
    garbage = tmp_path / "garbage.mp3"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio\n" * 200)
    empty = tmp_path / "empty.flac"
    empty.write_bytes(b"")
    silent = tmp_path / "zero_frames.wav"
    sf.write(str(silent), np.zeros((0, 2), np.float32), RATE)
    for path, code in (
        (garbage, "undecodable_audio"),
        (text, "undecodable_audio"),
        (empty, "empty_file"),
        (silent, "empty_audio"),
        (tmp_path / "absent.wav", "undecodable_audio"),
    ):
        for call in (audio.probe, audio.decode):
            with pytest.raises(EngineError) as caught:
                call(path)
            assert caught.value.code == code, (path.name, call.__name__)


def test_a_file_without_audio_is_rejected(tmp_path):
    video = tmp_path / "video.mkv"
    with av.open(str(video), "w") as out:
        stream = out.add_stream("ffv1", rate=5)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    with pytest.raises(EngineError, match="no audio stream") as caught:
        audio.probe(video)
    assert caught.value.code == "undecodable_audio"


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3"])
def test_encode_round_trips(tmp_path, fmt):
    signal = _sine(seconds=1.0)
    path = audio.encode(tmp_path / f"out.{fmt}", signal, RATE, fmt)
    info = audio.probe(path)
    assert info.channels == 2 and info.duration_s == pytest.approx(1.0, abs=0.06)
    back = audio.decode(path, mono=True)[0, 4000:-4000]
    assert _dominant_hz(back, RATE) == pytest.approx(FREQ, abs=3)
    if fmt != "mp3":  # lossless: 24-bit quantisation only
        np.testing.assert_allclose(audio.decode(path), signal, atol=1e-6)


def test_writer_streams_blocks_and_clips(tmp_path):
    signal = _sine(seconds=1.0) * 3.0  # out of range on purpose
    with audio.AudioWriter(tmp_path / "s.wav", RATE, 2, "wav") as writer:
        for start in range(0, signal.shape[1], 1000):
            writer.write(signal[:, start : start + 1000])
    assert writer.frames_written == signal.shape[1]
    np.testing.assert_allclose(audio.decode(tmp_path / "s.wav"), np.clip(signal, -1, 1), atol=1e-6)
    with pytest.raises(ValueError):
        audio.AudioWriter(tmp_path / "x.ogg", RATE, 2, "ogg")


def test_mp3_output_above_48k_is_resampled(tmp_path):
    signal = _sine(rate=96000, seconds=1.0)
    with audio.AudioWriter(tmp_path / "hi.mp3", 96000, 2, "mp3") as writer:
        for start in range(0, signal.shape[1], 9600):
            writer.write(signal[:, start : start + 9600])
    info = audio.probe(tmp_path / "hi.mp3")
    assert writer.output_rate == 48000 and info.sample_rate == 48000
    assert info.duration_s == pytest.approx(1.0, abs=0.06)


def test_shared_music_sample_probes_and_decodes(shared_data):
    sample = shared_data / "music_mix_20s.mp3"
    info = audio.probe(sample)
    assert info.channels == 2 and info.sample_rate == 44100
    decoded = audio.decode(sample, sample_rate=16000, mono=True)
    assert decoded.shape[1] / 16000 == pytest.approx(info.duration_s, abs=0.1)
    assert 0.01 < float(np.sqrt(np.mean(decoded**2))) < 1.0


# ---- inputs that lie about their length, or are too wide or too fast (hostile_audio builds them) ----


def _decoded_seconds(path: Path) -> float:
    """What the decoder really produces, counted independently of inference.audio."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        return sum(frame.samples for frame in container.decode(stream)) / stream.codec_context.sample_rate


HOSTILE = {
    "flac_streaminfo_says_1s": lambda d: hostile.flac_claiming(d / "a.flac", 30.0, hostile.RATE),
    "flac_without_total": lambda d: hostile.flac_claiming(d / "b.flac", 30.0, 0),
    "mp3_xing_says_10_frames": lambda d: hostile.mp3_claiming(d / "c.mp3", 30.0, 10),
    "wav_several_data_chunks": lambda d: hostile.wav_with_data_chunks(d / "d.wav", [1.0, 29.0, 1.0]),
    "wav_data_size_says_1s": lambda d: hostile.wav_with_data_size(d / "e.wav", 30.0, 2 * hostile.RATE),
    "wav_data_size_past_eof": lambda d: hostile.wav_with_data_size(d / "f.wav", 30.0, 0xFFFFFFF0),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_probe_measures_what_the_decoder_produces_not_the_header(tmp_path, name):
    path = HOSTILE[name](tmp_path)
    info = audio.probe(path)
    assert info.duration_s == pytest.approx(_decoded_seconds(path), abs=0.2)


@pytest.mark.parametrize("name", ["flac_streaminfo_says_1s", "flac_without_total", "mp3_xing_says_10_frames"])
def test_probe_refuses_audio_past_the_limit_whatever_the_header_claims(tmp_path, name):
    path = HOSTILE[name](tmp_path)
    with pytest.raises(EngineError) as caught:
        audio.probe(path, audio.DecodeLimits(max_seconds=10.0))
    assert caught.value.code == "audio_too_long"
    assert audio.probe(path, audio.DecodeLimits(max_seconds=40.0)).duration_s == pytest.approx(30.0, abs=0.2)


def test_probe_of_hours_of_silence_stops_at_the_limit(tmp_path):
    # A header-less FLAC: 2 h of silence in a few hundred kB. The probe must stop reading once past the limit.
    path = hostile.silent_flac(tmp_path / "silence.flac", 2 * 3600.0)
    assert path.stat().st_size < 2_000_000
    assert audio.probe(path).duration_s == pytest.approx(2 * 3600.0)  # without a limit: all of it
    with hostile.count_audio_read() as opened:
        with pytest.raises(EngineError) as caught:
            audio.probe(path, audio.DecodeLimits(max_seconds=60.0))
    assert caught.value.code == "audio_too_long"
    assert 60.0 < hostile.seconds_read(opened) <= 60.0 + hostile.LARGEST_FLAC_FRAME_S


def test_decode_helpers_stop_at_the_job_limit(tmp_path):
    path = HOSTILE["flac_streaminfo_says_1s"](tmp_path)  # holds 30 s
    blocks: list[np.ndarray] = []
    with audio.decode_limits(audio.DecodeLimits(max_seconds=5.0)):
        with pytest.raises(EngineError) as caught:
            for block in audio.iter_blocks(path, block_seconds=1.0):
                blocks.append(block)
        assert caught.value.code == "audio_too_long"
        with pytest.raises(EngineError, match="longer than"):
            audio.decode(path, sample_rate=16000)
    assert sum(block.shape[1] for block in blocks) <= 5 * hostile.RATE
    # The limit belongs to the context that set it: outside, the whole file decodes.
    assert audio.decode(path).shape[1] == 30 * hostile.RATE


def test_channels_and_sample_rate_are_capped(tmp_path):
    nine = tmp_path / "nine.wav"
    sf.write(str(nine), np.zeros((800, 9), np.float32), 8000)
    fast = tmp_path / "fast.wav"
    sf.write(str(fast), np.zeros((3840, 1), np.float32), 384000)
    widest = tmp_path / "widest.wav"
    sf.write(str(widest), np.zeros((1920, 8), np.float32), 192000)
    for path, code in ((nine, "too_many_channels"), (fast, "sample_rate_too_high")):
        for call in (audio.probe, audio.decode):
            with pytest.raises(EngineError) as caught:
                call(path)
            assert caught.value.code == code, (path.name, call.__name__)
    info = audio.probe(widest)
    assert (info.channels, info.sample_rate) == (8, 192000)
    assert audio.probe(nine, audio.DecodeLimits(max_channels=9)).channels == 9
