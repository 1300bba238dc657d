"""A built-in engine for every task: real, deterministic DSP and no model weights.

It exists so the API, the job runner and the benchmarks can run end to end on any machine (no GPU, no
downloads) and still produce meaningful files: the SAME output names, content types and JSON shapes as the real
engines, from simple signal processing:

- separate: the input split into frequency bands, one band per requested stem (the bands sum to the input);
- enhance: a rumble high-pass plus a downward gate on quiet frames, limited by `atten_lim_db`;
- transcribe: one "[speech]" segment per non-silent region;
- midi: the strongest spectral peak of each voiced frame, grouped into notes;
- generate: seeded tones and noise of exactly `duration_s`;
- master: one gain to the target loudness (unweighted BS.1770-style gating, no K-weighting), then a soft clip at the
  ceiling; report.json in the real engine's shape (figures from that approximate meter, and it says so);
- tune: pitch analysis only (autocorrelation f0 per 5 ms frame, the scale's nearest notes): pitch.json in the real
  shape; the audio passes through untouched (f0 after = before);
- fx: only `gain` entries are applied (the others are listed as skipped), plus `tail_s` of silence;
- mixdown: the real engine (inference.mixdown), which needs nothing more.
- song: seeded tones of exactly `duration_s` per variant, at 48 kHz stereo like ACE-Step; cover: the input with seeded
  tones mixed in; repaint: the input with seeded tones spliced into the span exactly as the real engine splices
  (inference/song_common.py); each with song.json in the real shape.

These need nothing beyond the core install (numpy, soxr, soundfile, PyAV): no scipy, pedalboard or pyworld.

Everything streams through `inference.audio.iter_blocks`, so memory stays bounded for long inputs.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soxr
from pydantic import BaseModel

from inference import audio
from inference.base import EngineError, EngineResult, OutputFile, ProgressFn, emit_partial
from inference.mixdown import MixdownEngine
from inference.params import (
    NOTE_NAMES,
    SCALES,
    TASK_PARAMS,
    CoverParams,
    EnhanceParams,
    FxParams,
    GenerateParams,
    MasterParams,
    MidiParams,
    MixdownParams,
    RepaintParams,
    SeparateParams,
    SongParams,
    TranscribeParams,
    TuneParams,
)
from inference.song_common import output_names, splice, write_song_json
from inference.transcript import Segment, Word, write_transcript

BLOCK_SECONDS = 10.0
# Which band each stem gets, lowest first: stems are ordered by where their energy usually sits.
_STEM_ORDER = ("bass", "piano", "guitar", "vocals", "other", "drums")
_GENERATE_RATE = 44100
_ENHANCE_RATE = 48000  # the real enhancer (DeepFilterNet3) writes 48 kHz
_SONG_RATE = 48000  # ACE-Step 1.5's VAE rate
# Test hook: when this variable names a file, a run holds at its first progress report (repeating that report, so
# a cancel still ends it) until the file exists. Tests use it to keep a job running for exactly as long as they
# need, whatever the input's length; it is never set in production.
HOLD_UNTIL_ENV = "STUDIO_BUILTIN_HOLD_UNTIL"
_HOLD_POLL_SECONDS = 0.05


class _LowPass:
    """Streaming low-pass: resample down to twice the cutoff and back up; soxr's anti-alias filter is the filter."""

    def __init__(self, rate: int, cutoff_hz: float, channels: int) -> None:
        low_rate = max(2, round(2 * cutoff_hz))
        self._down = soxr.ResampleStream(rate, low_rate, channels, dtype="float32", quality="HQ")
        self._up = soxr.ResampleStream(low_rate, rate, channels, dtype="float32", quality="HQ")

    def push(self, frames: np.ndarray, last: bool) -> np.ndarray:
        return self._up.resample_chunk(self._down.resample_chunk(frames, last=last), last=last)


class _BandSplitter:
    """Splits a stream into len(cutoffs) + 1 bands that sum back to the input (differences of low-passes)."""

    def __init__(self, rate: int, channels: int, cutoffs: list[float]) -> None:
        self._filters = [_LowPass(rate, cutoff, channels) for cutoff in cutoffs]
        self._channels = channels
        self._input = np.zeros((0, channels), np.float32)
        self._lows = [np.zeros((0, channels), np.float32) for _ in cutoffs]

    def push(self, block: np.ndarray, last: bool) -> list[np.ndarray]:
        """block: (channels, samples); returns bands as (channels, n) for the n samples every filter has produced."""
        frames = np.ascontiguousarray(block.T, dtype=np.float32)
        self._input = np.concatenate([self._input, frames])
        self._lows = [
            np.concatenate([low, f.push(frames, last)]) for low, f in zip(self._lows, self._filters, strict=True)
        ]
        if last:  # the resampling round trip may end a sample or two off: align to the input length
            n = len(self._input)
            self._lows = [np.pad(low[:n], ((0, n - len(low[:n])), (0, 0))) for low in self._lows]
        n = min(len(self._input), *(len(low) for low in self._lows))
        x, lows = self._input[:n], [low[:n] for low in self._lows]
        self._input = self._input[n:]
        self._lows = [low[n:] for low in self._lows]
        edges = [np.zeros_like(x), *lows, x]
        return [np.ascontiguousarray((edges[i + 1] - edges[i]).T) for i in range(len(edges) - 1)]


@dataclass
class BuiltinEngine:
    """One engine for all tasks: the params' type says which task a run is. `task` pins it when given."""

    model_key: str = "builtin"
    task: str | None = None

    def run(
        self,
        input_path: Path | None,
        params: BaseModel,
        out_dir: Path,
        progress: ProgressFn,
        extra_inputs: Mapping[str, Path] | None = None,
    ) -> EngineResult:
        if self.task is not None and not isinstance(params, TASK_PARAMS[self.task]):
            raise TypeError(f"the builtin {self.task} engine cannot run {type(params).__name__}")
        progress = _held(progress)
        out_dir.mkdir(parents=True, exist_ok=True)
        if isinstance(params, GenerateParams):
            return self._generate(params, out_dir, progress)
        if isinstance(params, MixdownParams):
            # The real mixdown needs nothing beyond the core install: it is its own stand-in.
            return MixdownEngine().run(input_path, params, out_dir, progress, extra_inputs)
        if isinstance(params, SongParams):
            return self._song(None, params, out_dir, progress)
        if input_path is None:
            raise EngineError("this task needs an audio file", code="missing_input")
        if isinstance(params, SeparateParams):
            return self._separate(input_path, params, out_dir, progress)
        if isinstance(params, EnhanceParams):
            return self._enhance(input_path, params, out_dir, progress)
        if isinstance(params, TranscribeParams):
            return self._transcribe(input_path, params, out_dir, progress)
        if isinstance(params, MidiParams):
            return self._midi(input_path, params, out_dir, progress)
        if isinstance(params, MasterParams):
            return self._master(input_path, (extra_inputs or {}).get("reference"), params, out_dir, progress)
        if isinstance(params, TuneParams):
            return self._tune(input_path, params, out_dir, progress)
        if isinstance(params, FxParams):
            return self._fx(input_path, params, out_dir, progress)
        if isinstance(params, CoverParams | RepaintParams):
            return self._song(input_path, params, out_dir, progress)
        raise TypeError(f"the builtin engine cannot run {type(params).__name__}")

    def _separate(self, input_path: Path, params: SeparateParams, out_dir: Path, progress: ProgressFn) -> EngineResult:
        info = audio.probe(input_path)
        stems = params.output_stems()
        # A stem and its complement: `two_stems`, or a vocals model's vocals + instrumental (the RoFormer default).
        pair = (params.two_stems, f"no_{params.two_stems}") if params.two_stems else None
        if "instrumental" in stems:
            pair = ("vocals", "instrumental")
        if pair:
            bands_for = [pair[0]]  # one band; its complement is everything else
        else:
            bands_for = sorted(stems, key=_STEM_ORDER.index)
        cutoffs = list(np.geomspace(150.0, 6000.0, len(bands_for) - 1)) if len(bands_for) > 1 else []
        if pair:
            cutoffs = [150.0, 4000.0]  # the chosen stem gets the middle band
        splitter = _BandSplitter(info.sample_rate, info.channels, cutoffs)
        paths = {stem: out_dir / f"{stem}.{params.format}" for stem in stems}
        writers = {
            stem: audio.AudioWriter(path, info.sample_rate, info.channels, params.format)
            for stem, path in paths.items()
        }
        try:
            for bands, done in _blocks_with_flush(input_path, splitter.push, info.sample_rate, resample=False):
                if pair:
                    writers[pair[0]].write(bands[1])
                    writers[pair[1]].write(bands[0] + bands[2])
                else:
                    for stem, band in zip(bands_for, bands, strict=True):
                        writers[stem].write(band)
                progress(min(0.99, done / info.duration_s), "separating")
        finally:
            for writer in writers.values():
                writer.close()
        outputs = [
            OutputFile(path.name, path, audio.CONTENT_TYPES[params.format], {"stem": stem})
            for stem, path in paths.items()
        ]
        for output in outputs:
            emit_partial(output)
        progress(1.0, "done")
        return EngineResult(outputs, {"audio_seconds": info.duration_s})

    def _enhance(self, input_path: Path, params: EnhanceParams, out_dir: Path, progress: ProgressFn) -> EngineResult:
        info = audio.probe(input_path)
        floor = 0.0 if params.atten_lim_db is None else 10 ** (-params.atten_lim_db / 20)
        frame = _ENHANCE_RATE // 100  # 10 ms gate frames
        splitter = _BandSplitter(_ENHANCE_RATE, info.channels, [80.0])  # drop rumble below 80 Hz
        path = out_dir / f"enhanced.{params.format}"
        with audio.AudioWriter(path, _ENHANCE_RATE, info.channels, params.format) as writer:
            carry = np.zeros((info.channels, 0), np.float32)
            for bands, done in _blocks_with_flush(input_path, splitter.push, _ENHANCE_RATE, resample=True):
                carry = np.concatenate([carry, bands[1]], axis=1)
                usable = carry.shape[1] - carry.shape[1] % frame
                writer.write(_gate(carry[:, :usable], frame, floor))
                carry = carry[:, usable:]
                progress(min(0.99, done / info.duration_s), "enhancing")
            if carry.shape[1]:
                writer.write(_gate(carry, carry.shape[1], floor))
        progress(1.0, "done")
        return EngineResult(
            [OutputFile(path.name, path, audio.CONTENT_TYPES[params.format])], {"audio_seconds": info.duration_s}
        )

    def _transcribe(
        self, input_path: Path, params: TranscribeParams, out_dir: Path, progress: ProgressFn
    ) -> EngineResult:
        rate, hop = 16000, 320  # 20 ms frames
        info = audio.probe(input_path)
        levels: list[np.ndarray] = []
        carry = np.zeros(0, np.float32)
        for block in audio.iter_blocks(input_path, sample_rate=rate, mono=True, block_seconds=BLOCK_SECONDS):
            carry = np.concatenate([carry, block[0]])
            usable = len(carry) - len(carry) % hop
            levels.append(np.sqrt(np.mean(carry[:usable].reshape(-1, hop) ** 2, axis=1)))
            carry = carry[usable:]
            progress(min(0.9, 0.9 * sum(map(len, levels)) * hop / rate / info.duration_s), "transcribing")
        voiced = np.concatenate(levels) > 10 ** (-40 / 20) if levels else np.zeros(0, bool)
        regions = _regions(voiced, hop / rate, merge_gap_s=0.3, min_s=0.1)
        language = params.language or "en"
        segments = [
            Segment(start=start, end=end, text="[speech]",
                    words=(Word("[speech]", start, end, 1.0),) if params.word_timestamps else None)
            for start, end in regions
        ]  # fmt: skip
        outputs = write_transcript(
            out_dir, segments, language=language, task=params.task, model=self.model_key, duration=info.duration_s
        )
        progress(1.0, "done")
        return EngineResult(outputs, {"audio_seconds": info.duration_s})

    def _midi(self, input_path: Path, params: MidiParams, out_dir: Path, progress: ProgressFn) -> EngineResult:
        rate, size, hop = 22050, 2048, 256
        info = audio.probe(input_path)
        threshold = 10 ** ((-60 + 50 * params.frame_threshold) / 20)  # frame_threshold 0.3 -> -45 dBFS
        window = np.hanning(size).astype(np.float32)
        freqs = np.fft.rfftfreq(size, 1 / rate)
        band = (freqs >= (params.min_hz or 30.0)) & (freqs <= (params.max_hz or 4200.0))
        pitches: list[np.ndarray] = []
        levels: list[np.ndarray] = []
        carry = np.zeros(size // 2, np.float32)  # centre the first frame on t = 0
        for block in audio.iter_blocks(input_path, sample_rate=rate, mono=True, block_seconds=BLOCK_SECONDS):
            carry = np.concatenate([carry, block[0]])
            count = max(0, (len(carry) - size) // hop + 1)
            if count:
                frames = np.lib.stride_tricks.sliding_window_view(carry, size)[::hop][:count]
                spectrum = np.abs(np.fft.rfft(frames * window, axis=1))[:, band]
                peak_hz = freqs[band][np.argmax(spectrum, axis=1)]
                pitches.append(np.round(69 + 12 * np.log2(np.maximum(peak_hz, 1.0) / 440.0)).astype(int))
                levels.append(np.sqrt(np.mean(frames**2, axis=1)))
                carry = carry[count * hop :]
            progress(min(0.9, 0.9 * sum(map(len, levels)) * hop / rate / info.duration_s), "transcribing")
        pitch = np.concatenate(pitches) if pitches else np.zeros(0, int)
        level = np.concatenate(levels) if levels else np.zeros(0, np.float32)
        notes = _notes(pitch, level, threshold, hop / rate, params.min_note_ms / 1000)
        midi_path, json_path = out_dir / "notes.mid", out_dir / "notes.json"
        _write_midi(midi_path, notes)
        json_path.write_text(json.dumps(notes))
        metadata = {"notes": len(notes)}
        progress(1.0, "done")
        return EngineResult(
            [
                OutputFile("notes.mid", midi_path, "audio/midi", metadata),
                OutputFile("notes.json", json_path, "application/json", metadata),
            ],
            {"audio_seconds": info.duration_s},
        )

    def _master(
        self, input_path: Path, reference: Path | None, params: MasterParams, out_dir: Path, progress: ProgressFn
    ) -> EngineResult:
        before, rate, channels = _rough_loudness(input_path)
        if not np.isfinite(before["integrated_lufs"]):
            raise EngineError("the audio is silent (or under 0.4 s): no loudness to master", code="silent_audio")
        reference_loudness = _rough_loudness(reference)[0] if reference is not None else None
        target = params.target(None if reference_loudness is None else reference_loudness["integrated_lufs"])
        gain_db = target - before["integrated_lufs"]
        ceiling = 10 ** (params.ceiling_dbtp / 20)
        path = out_dir / f"mastered.{params.format}"
        with audio.AudioWriter(path, rate, channels, params.format) as writer:
            for block in audio.iter_blocks(input_path, block_seconds=BLOCK_SECONDS):
                writer.write(ceiling * np.tanh(block * 10 ** (gain_db / 20) / ceiling))
        progress(0.8, "measuring")
        after, _, _ = _rough_loudness(path)
        report = {
            "standard": "builtin approximation: unweighted mean square with BS.1770 gating, sample peak",
            "target_lufs": round(target, 3),
            "ceiling_dbtp": params.ceiling_dbtp,
            "preset": params.preset,
            "input": before,
            "output": after,
            "loudness_error_lu": round(after["integrated_lufs"] - target, 3),
            "gain_applied_db": round(after["integrated_lufs"] - before["integrated_lufs"], 3),
            "drive_db": round(gain_db, 3),
            "renders": 1,
            "chain": [{"plugin": "Gain", "gain_db": round(gain_db, 3)}, {"plugin": "tanh soft clip", "ceiling_dbtp":
                      params.ceiling_dbtp}],
            "sample_rate": rate,
            "channels": channels,
        }  # fmt: skip
        if reference_loudness is not None:
            report["reference"] = reference_loudness  # the demo engine only levels to it: no tone match
        report_path = out_dir / "report.json"
        report_path.write_text(json.dumps(report, indent=2))
        progress(1.0, "done")
        seconds = audio.probe(input_path).duration_s
        return EngineResult(
            [
                OutputFile(path.name, path, audio.CONTENT_TYPES[params.format],
                           {"integrated_lufs": after["integrated_lufs"], "true_peak_dbtp": after["true_peak_dbtp"]}),
                OutputFile(report_path.name, report_path, "application/json"),
            ],
            {"audio_seconds": seconds},
        )  # fmt: skip

    def _tune(self, input_path: Path, params: TuneParams, out_dir: Path, progress: ProgressFn) -> EngineResult:
        rate, hop, size = 16000, 80, 1024  # 5 ms frames, 64 ms autocorrelation windows
        f0_parts: list[np.ndarray] = []
        carry = np.zeros(size // 2, np.float32)
        for block in audio.iter_blocks(input_path, sample_rate=rate, mono=True, block_seconds=BLOCK_SECONDS):
            carry = np.concatenate([carry, block[0]])
            count = max(0, (len(carry) - size) // hop + 1)
            if count:
                frames = np.lib.stride_tricks.sliding_window_view(carry, size)[::hop][:count]
                f0_parts.append(_autocorrelation_f0(frames, rate))
                carry = carry[count * hop :]
        f0 = np.concatenate(f0_parts) if f0_parts else np.zeros(0)
        voiced = f0 > 0
        midi = 69 + 12 * np.log2(f0[voiced] / 440.0)
        steps = np.asarray(SCALES[params.scale])
        tonic = 0 if params.key == "auto" or params.scale == "chromatic" else NOTE_NAMES.index(params.key)
        classes = (steps + tonic) % 12
        diff = (midi[:, None] - classes[None, :]) % 12.0
        diff = np.where(diff > 6.0, diff - 12.0, diff)
        cents = 100 * diff[np.arange(len(midi)), np.argmin(np.abs(diff), axis=1)] if len(midi) else np.zeros(0)
        target = f0.copy()
        target[voiced] = f0[voiced] * 2 ** (-params.strength * cents / 1200)
        mad = round(float(np.median(np.abs(cents))), 2) if len(cents) else None
        path = out_dir / f"tuned.{params.format}"
        info = audio.probe(input_path)
        with audio.AudioWriter(path, info.sample_rate, info.channels, params.format) as writer:
            for block in audio.iter_blocks(input_path, block_seconds=BLOCK_SECONDS):
                writer.write(block)
        summary = {
            "tracker": "builtin autocorrelation (analysis only: the audio passes through untouched)",
            "key": None if params.scale == "chromatic" else NOTE_NAMES[tonic],
            "scale": params.scale,
            "allowed_pitch_classes": [NOTE_NAMES[c] for c in sorted(int(c) for c in classes)],
            "voiced_fraction": round(float(voiced.mean()), 4) if len(voiced) else 0.0,
            "mad_cents_before": mad,
            "mad_cents_after": mad,
            "resynthesized_windows": 0,
        }
        pitch = {
            "hop_s": hop / rate,
            "times_s": [round(i * hop / rate, 5) for i in range(len(f0))],
            "f0_before_hz": [round(float(v), 2) for v in f0],
            "f0_target_hz": [round(float(v), 2) for v in target],
            "f0_after_hz": [round(float(v), 2) for v in f0],
            "voiced": [bool(v) for v in voiced],
            "summary": summary,
        }
        pitch_path = out_dir / "pitch.json"
        pitch_path.write_text(json.dumps(pitch))
        progress(1.0, "done")
        return EngineResult(
            [
                OutputFile(path.name, path, audio.CONTENT_TYPES[params.format],
                           {"mad_cents_before": mad, "mad_cents_after": mad, "key": summary["key"],
                            "scale": params.scale}),
                OutputFile(pitch_path.name, pitch_path, "application/json"),
            ],
            {"audio_seconds": info.duration_s},
        )  # fmt: skip

    def _fx(self, input_path: Path, params: FxParams, out_dir: Path, progress: ProgressFn) -> EngineResult:
        info = audio.probe(input_path)
        gain_db = sum(entry.params.gain_db for entry in params.chain if entry.effect == "gain")
        gain = 10 ** (gain_db / 20)
        path = out_dir / f"processed.{params.format}"
        samples = 0
        with audio.AudioWriter(path, info.sample_rate, info.channels, params.format) as writer:
            for block in audio.iter_blocks(input_path, block_seconds=BLOCK_SECONDS):
                writer.write(block * gain)
                samples += block.shape[1]
                progress(min(0.99, samples / info.sample_rate / info.duration_s), "processing")
            tail = round(params.tail_s * info.sample_rate)
            for start in range(0, tail, info.sample_rate):
                writer.write(np.zeros((info.channels, min(info.sample_rate, tail - start)), np.float32))
        progress(1.0, "done")
        metadata = {
            "chain": [entry.effect for entry in params.chain],
            "applied": [entry.effect for entry in params.chain if entry.effect == "gain"],
            "skipped": [entry.effect for entry in params.chain if entry.effect != "gain"],
            "tail_s": params.tail_s,
            "sample_rate": info.sample_rate,
            "channels": info.channels,
        }
        return EngineResult(
            [OutputFile(path.name, path, audio.CONTENT_TYPES[params.format], metadata)],
            {"audio_seconds": samples / info.sample_rate, "output_seconds": samples / info.sample_rate + params.tail_s},
        )

    def _generate(self, params: GenerateParams, out_dir: Path, progress: ProgressFn) -> EngineResult:
        seed = params.seed if params.seed is not None else 0
        samples = max(1, round(params.duration_s * _GENERATE_RATE))
        t = np.arange(samples) / _GENERATE_RATE
        fade = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.01)  # 10 ms fades: no clicks at the ends
        outputs = []
        for index in range(1, params.variants + 1):
            rng = np.random.default_rng([seed, index, zlib.crc32(params.prompt.encode())])
            tone = np.zeros(samples)
            for freq, amp in zip(rng.uniform(110.0, 880.0, 3), rng.uniform(0.05, 0.2, 3), strict=True):
                tone += amp * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))
            stereo = np.stack([tone + 0.01 * rng.standard_normal(samples) for _ in range(2)]) * fade
            name = f"variant_{index}.wav"
            path = audio.encode(out_dir / name, stereo.astype(np.float32), _GENERATE_RATE, "wav")
            outputs.append(OutputFile(name, path, audio.CONTENT_TYPES["wav"], {
                "model": self.model_key, "variant": index, "seed": seed, "sample_rate": _GENERATE_RATE,
                "duration_s": samples / _GENERATE_RATE, "steps": params.steps,
                "guidance_scale": params.guidance_scale,
            }))  # fmt: skip
            progress(index / params.variants, "generating")
        return EngineResult(outputs, {"output_seconds": params.variants * params.duration_s})

    def _song(
        self,
        input_path: Path | None,
        params: SongParams | CoverParams | RepaintParams,
        out_dir: Path,
        progress: ProgressFn,
    ) -> EngineResult:
        seed = params.seed if params.seed is not None else 0
        source = None
        if input_path is not None:
            source = audio.decode(input_path, sample_rate=_SONG_RATE, mono=True)
            source = np.repeat(source, 2, axis=0)
            if isinstance(params, RepaintParams) and params.end_s > source.shape[1] / _SONG_RATE:
                raise EngineError("end_s is past the end of the input", code="span_outside_input")
        samples = source.shape[1] if source is not None else max(1, round(params.duration_s * _SONG_RATE))
        t = np.arange(samples) / _SONG_RATE
        outputs = []
        names = output_names(params)
        for index, name in enumerate(names, start=1):
            rng = np.random.default_rng([seed, index, zlib.crc32((params.prompt + params.lyrics).encode())])
            tones = sum(0.1 * np.sin(2 * np.pi * freq * t) for freq in rng.uniform(110.0, 880.0, 3))
            generated = np.stack([tones, tones]).astype(np.float32)
            if isinstance(params, RepaintParams):
                assert source is not None
                song = splice(source, generated, params.start_s, params.end_s, _SONG_RATE)
            else:
                song = generated if source is None else (0.7 * source + 0.3 * generated).astype(np.float32)
            path = audio.encode(out_dir / f"{name}.{params.format}", song, _SONG_RATE, params.format)
            outputs.append(OutputFile(path.name, path, audio.CONTENT_TYPES[params.format], {
                "model": self.model_key, "seed": seed, "sample_rate": _SONG_RATE, "duration_s": samples / _SONG_RATE,
            }))  # fmt: skip
            progress(index / len(names), "generating")
        outputs.append(
            write_song_json(
                out_dir, params, model=self.model_key, revision=None, seed=seed, sample_rate=_SONG_RATE,
                duration_s=samples / _SONG_RATE, outputs=outputs,
            )
        )  # fmt: skip
        metrics = {"output_seconds": len(names) * samples / _SONG_RATE}
        if source is not None:
            metrics["audio_seconds"] = samples / _SONG_RATE
        return EngineResult(outputs, metrics)


def build_engine(model_key: str, weights_dir: Path, **options: Any) -> BuiltinEngine:
    """Same signature as the real engine factories; needs no files (`weights_dir` is ignored)."""
    return BuiltinEngine(model_key=model_key, task=options.get("task"))


def builtin_engine(task: str) -> BuiltinEngine:
    """The builtin engine for one task (a runner's fallback when a task has no weights)."""
    if task not in TASK_PARAMS:
        raise KeyError(f"unknown task {task!r}")
    return BuiltinEngine(model_key=f"builtin/{task}", task=task)


def _held(progress: ProgressFn) -> ProgressFn:
    """`progress`, holding at its first report while HOLD_UNTIL_ENV names a file that does not exist yet."""
    gate = os.environ.get(HOLD_UNTIL_ENV)
    if not gate:
        return progress
    release = Path(gate)
    holding = True

    def report(fraction: float, stage: str | None = None) -> None:
        nonlocal holding
        while holding and not release.exists():
            progress(fraction, stage)  # a cancellation raises here and ends the hold
            time.sleep(_HOLD_POLL_SECONDS)
        holding = False
        progress(fraction, stage)

    return report


def _blocks_with_flush(input_path: Path, push: Any, rate: int, resample: bool) -> Iterator[tuple[Any, float]]:
    """Feed blocks decoded at `rate` through a streaming filter, flushing it with the last one.

    Yields (the filter's output, input seconds consumed so far). `resample` asks the decoder for `rate`.
    """
    done = 0.0
    previous: np.ndarray | None = None
    for block in audio.iter_blocks(input_path, sample_rate=rate if resample else None, block_seconds=BLOCK_SECONDS):
        if previous is not None:
            yield push(previous, False), done
        previous = block
        done += block.shape[1] / rate
    assert previous is not None  # iter_blocks raises on empty audio
    yield push(previous, True), done


def _gate(block: np.ndarray, frame: int, floor: float) -> np.ndarray:
    """Attenuate 10 ms frames quieter than -50 dBFS down to `floor` (a linear gain)."""
    if block.shape[1] == 0:
        return block
    frames = block.reshape(block.shape[0], -1, frame)
    rms = np.sqrt(np.mean(frames**2, axis=(0, 2)))
    gain = np.where(rms > 10 ** (-50 / 20), 1.0, floor).astype(np.float32)
    return (frames * gain[None, :, None]).reshape(block.shape)


def _regions(active: np.ndarray, frame_s: float, merge_gap_s: float, min_s: float) -> list[tuple[float, float]]:
    regions: list[list[float]] = []
    edges = np.flatnonzero(np.diff(np.concatenate([[0], active.astype(int), [0]])))
    for start, end in zip(edges[::2], edges[1::2], strict=True):
        if regions and start * frame_s - regions[-1][1] < merge_gap_s:
            regions[-1][1] = end * frame_s
        else:
            regions.append([start * frame_s, end * frame_s])
    return [(start, end) for start, end in regions if end - start >= min_s]


def _notes(
    pitch: np.ndarray, level: np.ndarray, threshold: float, frame_s: float, min_s: float
) -> list[dict[str, Any]]:
    """Runs of voiced frames holding one pitch become notes, in the real engine's notes.json shape."""
    notes = []
    voiced = level > threshold
    start = 0
    for i in range(1, len(pitch) + 1):
        if i == len(pitch) or pitch[i] != pitch[start] or voiced[i] != voiced[start]:
            if voiced[start] and (i - start) * frame_s >= min_s and 0 <= pitch[start] <= 127:
                amplitude = float(min(1.0, 4 * np.max(level[start:i])))
                notes.append(
                    {
                        "start_s": round(start * frame_s, 4),
                        "end_s": round(i * frame_s, 4),
                        "pitch": int(pitch[start]),
                        "velocity": max(1, round(127 * amplitude)),
                        "amplitude": amplitude,
                        "pitch_bends": [],
                    }
                )
            start = i
    return notes


def _write_midi(path: Path, notes: list[dict[str, Any]], ppq: int = 480) -> None:
    """A format-0 standard MIDI file at 120 bpm (960 ticks per second)."""
    events = []
    for note in notes:
        events.append((round(note["start_s"] * 2 * ppq), 1, bytes([0x90, note["pitch"], note["velocity"]])))
        events.append((round(note["end_s"] * 2 * ppq), 0, bytes([0x80, note["pitch"], 0])))
    track = bytearray(b"\x00\xff\x51\x03\x07\xa1\x20")  # tempo: 500,000 us per quarter note
    now = 0
    for tick, _, message in sorted(events):  # at equal ticks, note-offs (0) go before note-ons (1)
        track += _varlen(tick - now) + message
        now = tick
    track += b"\x00\xff\x2f\x00"
    header = b"MThd" + (6).to_bytes(4, "big") + (0).to_bytes(2, "big") + (1).to_bytes(2, "big") + ppq.to_bytes(2, "big")
    path.write_bytes(header + b"MTrk" + len(track).to_bytes(4, "big") + bytes(track))


def _varlen(value: int) -> bytes:
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def _rough_loudness(path: Path) -> tuple[dict[str, float], int, int]:
    """Unweighted BS.1770-style gated loudness (400 ms blocks, 100 ms hop, -70 / -10 gates) and sample peak, in the
    real master report's keys; returns (figures, rate, channels)."""
    info = audio.probe(path)
    hop = round(0.1 * info.sample_rate)
    powers: list[np.ndarray] = []
    peak = 0.0
    carry = np.zeros((info.channels, 0), np.float32)
    for block in audio.iter_blocks(path, block_seconds=BLOCK_SECONDS):
        peak = max(peak, float(np.max(np.abs(block))))
        carry = np.concatenate([carry, block], axis=1)
        whole = carry.shape[1] // hop
        powers.append(np.square(carry[:, : whole * hop]).reshape(info.channels, whole, hop).sum(axis=(0, 2)) / hop)
        carry = carry[:, whole * hop :]
    subs = np.concatenate(powers) if powers else np.zeros(0)
    blocks = np.convolve(subs, np.ones(4) / 4, mode="valid") if len(subs) >= 4 else np.zeros(0)
    with np.errstate(divide="ignore"):
        loudness = -0.691 + 10 * np.log10(blocks)
    lufs = -np.inf
    gated = blocks[loudness > -70]
    if len(gated):
        relative = -0.691 + 10 * np.log10(gated.mean()) - 10
        kept = blocks[(loudness > -70) & (loudness > relative)]
        lufs = -0.691 + 10 * np.log10(kept.mean()) if len(kept) else -np.inf
    peak_db = 20 * np.log10(peak) if peak > 0 else -np.inf
    figures = {
        "integrated_lufs": round(float(lufs), 3),
        "loudness_range_lu": None,
        "true_peak_dbtp": round(float(peak_db), 3),
        "sample_peak_dbfs": round(float(peak_db), 3),
    }
    return figures, info.sample_rate, info.channels


def _autocorrelation_f0(frames: np.ndarray, rate: int, low: float = 65.0, high: float = 1050.0) -> np.ndarray:
    """f0 per frame from the normalised autocorrelation peak in [low, high] Hz; 0 where it is weak or quiet."""
    frames = frames - frames.mean(axis=1, keepdims=True)
    spectrum = np.fft.rfft(frames, n=2 * frames.shape[1], axis=1)
    corr = np.fft.irfft(np.abs(spectrum) ** 2, axis=1)[:, : frames.shape[1]]
    energy = corr[:, :1]
    lags = np.arange(int(rate / high), int(rate / low) + 1)
    normalised = corr[:, lags] / np.maximum(energy, 1e-12)
    best = np.argmax(normalised, axis=1)
    strength = normalised[np.arange(len(frames)), best]
    rms = np.sqrt(energy[:, 0] / frames.shape[1])
    return np.where((strength > 0.5) & (rms > 1e-3), rate / lags[best], 0.0)
