"""Speech to text with openai-whisper: transcript.json / .txt / .srt / .vtt.

Loading: the checkpoint is `weights_dir/whisper/<name>/<name>.pt` in whisper's own format. We verify its sha256
ourselves (streamed) and then hand whisper the file path, instead of `whisper.load_model(name, download_root=...)`,
because on a mismatch or a missing file whisper's loader silently tries to download from the internet (and would
overwrite the read-only weights volume). The expected sha256 and the alignment heads (the cross-attention heads
word timestamps use; a bare path loses them) come from whisper's own tables for official names, so the result is
exactly what `load_model(name)` builds. Any other name (tests' tiny random checkpoints) must come with its sha256
and gets whisper's default heads.

Input: decoded to a 16 kHz mono float32 array with inference.audio (PyAV), so no ffmpeg CLI is needed.

Long audio: whisper slides 30 s windows over a log-mel of the whole input. We compute that log-mel 60 s at a time
(`chunked_log_mel_spectrogram`, bit-identical to whisper's), so host memory holds the decoded samples and the mel
(3.8 MB and 1.9-3.1 MB per audio minute) rather than whisper's whole-input STFT; the GPU holds the model and one
window.

Precision and batching: fp16 on CUDA (whisper.transcribe's default, half the memory and faster on tensor cores),
fp32 on the CPU, where whisper does not support fp16. Windows are not batched: whisper's transcribe loop starts each
window where the previous one's last timestamp ended and prompts it with the previous text, so windows depend on
each other and batching them would change the transcript.

Progress follows whisper's own frame counter (the tqdm bar in whisper.transcribe, which advances as each window's
segments are committed); see `_whisper_progress`.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import whisper
from pydantic import BaseModel

from inference import audio
from inference.base import EngineResult, ProgressFn, emit_partial
from inference.models import load_lock, sha256_file
from inference.params import TranscribeParams
from inference.transcript import DecoderStats, Segment, Word, segment_json, write_transcript

if TYPE_CHECKING:
    from inference.transcribe_ct2 import FasterWhisperEngine

SAMPLE_RATE = whisper.audio.SAMPLE_RATE  # 16 kHz
DECODE_SHARE = 0.05  # progress fraction given to decoding the input; transcription gets the rest


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    sha256: str
    alignment_heads: bytes | None


def official_checkpoint(name: str, folder: Path) -> Checkpoint | None:
    """Where an official model's file lives and what it must hash to, from whisper's own tables; None if unknown."""
    url = whisper._MODELS.get(name)
    if url is None:
        return None
    return Checkpoint(
        path=folder / os.path.basename(url), sha256=url.split("/")[-2], alignment_heads=whisper._ALIGNMENT_HEADS[name]
    )


def load_checkpoint(checkpoint: Checkpoint, device: str) -> whisper.Whisper:
    if not checkpoint.path.is_file():
        raise FileNotFoundError(f"{checkpoint.path} is missing: pull the whisper weights first")
    if sha256_file(checkpoint.path) != checkpoint.sha256:
        raise RuntimeError(f"{checkpoint.path} does not match its expected sha256")
    model = whisper.load_model(str(checkpoint.path), device=device)
    if checkpoint.alignment_heads is not None:
        model.set_alignment_heads(checkpoint.alignment_heads)
    return model


# whisper.transcribe has no progress callback and no way to bound its spectrogram's memory; we swap the `tqdm`
# module and the `log_mel_spectrogram` function it looks up for the duration of a call, so calls in one process
# are serialised (one model, one device: they would queue anyway).
_TRANSCRIBE_LOCK = threading.Lock()
# The module, not the function whisper/__init__.py re-exports under the same name.
_WHISPER_TRANSCRIBE_MODULE = importlib.import_module("whisper.transcribe")


class _SegmentsAsDecoded:
    """Emits whisper.transcribe's segments window by window (numbered as write_transcript numbers them): its
    progress bar is updated right after each window's segments join its `all_segments` list, read from its frame."""

    def __init__(self, with_words: bool) -> None:
        self.with_words = with_words
        self.seen = 0  # raw segments already looked at
        self.count = 0  # non-empty segments emitted

    def after_window(self, transcribe_frame: FrameType | None) -> None:
        raw_segments = transcribe_frame.f_locals.get("all_segments") if transcribe_frame is not None else None
        if not isinstance(raw_segments, list):
            return  # another whisper release: the transcript's segments are then emitted as it is written
        for raw in raw_segments[self.seen :]:
            segment = _segment(raw, self.with_words)
            if segment.text:
                emit_partial(segment_json(self.count, segment))
                self.count += 1
        self.seen = len(raw_segments)


@contextmanager
def _whisper_hooks(progress: ProgressFn, start: float, decoded: _SegmentsAsDecoded) -> Iterator[None]:
    class FrameProgress:
        def __init__(self, total: int, **_: Any) -> None:
            self.total = max(1, total)
            self.done = 0

        def __enter__(self) -> FrameProgress:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def update(self, frames: int) -> None:
            decoded.after_window(sys._getframe(1))  # whisper/transcribe.py calls pbar.update after each window
            self.done += frames
            progress(start + (1.0 - start) * min(1.0, self.done / self.total), "transcribing")

    original = _WHISPER_TRANSCRIBE_MODULE.tqdm, _WHISPER_TRANSCRIBE_MODULE.log_mel_spectrogram
    _WHISPER_TRANSCRIBE_MODULE.tqdm = SimpleNamespace(tqdm=FrameProgress)
    # The same spectrogram in bounded memory (see chunked_log_mel_spectrogram).
    _WHISPER_TRANSCRIBE_MODULE.log_mel_spectrogram = chunked_log_mel_spectrogram
    try:
        yield
    finally:
        _WHISPER_TRANSCRIBE_MODULE.tqdm, _WHISPER_TRANSCRIBE_MODULE.log_mel_spectrogram = original


MEL_FRAMES_PER_CHUNK = 6000  # 60 s of audio per STFT chunk


def chunked_log_mel_spectrogram(
    audio: np.ndarray | torch.Tensor,
    n_mels: int = 80,
    padding: int = 0,
    device: str | torch.device | None = None,
    frames_per_chunk: int = MEL_FRAMES_PER_CHUNK,
) -> torch.Tensor:
    """whisper.audio.log_mel_spectrogram, computed 60 s at a time.

    Whisper's own version pads a copy of the whole input and holds its whole STFT (about 4x the decoded audio for
    a long file); here the padded signal is virtual (reflect + zero padding by index) and only one chunk's STFT
    exists at a time, so peak memory is the mel itself (half the size of the 16 kHz audio) plus one chunk.
    """
    samples = audio if torch.is_tensor(audio) else torch.from_numpy(np.asarray(audio, dtype=np.float32))
    target = torch.device(device) if device is not None else samples.device
    n_fft, hop = whisper.audio.N_FFT, whisper.audio.HOP_LENGTH
    length, total = samples.shape[-1], samples.shape[-1] + padding
    n_frames = total // hop  # torch.stft(center=True) gives total // hop + 1 frames; whisper drops the last
    window = torch.hann_window(n_fft, device=target)
    filters = whisper.audio.mel_filters(target, n_mels)
    log_spec = torch.empty(n_mels, n_frames, device=target)
    for first in range(0, n_frames, frames_per_chunk):
        last = min(n_frames, first + frames_per_chunk)
        # Positions in the centred signal: reflect-padded by n_fft // 2 at both ends, zero-padded on the right.
        index = torch.arange(first * hop, (last - 1) * hop + n_fft) - n_fft // 2
        index = torch.where(index < 0, -index, index)
        index = torch.where(index >= total, 2 * (total - 1) - index, index)
        chunk = torch.zeros(index.shape[0])
        inside = index < length
        chunk[inside] = samples[index[inside]].float()
        stft = torch.stft(chunk.to(target), n_fft, hop, window=window, center=False, return_complex=True)
        log_spec[:, first:last] = torch.clamp(filters @ stft.abs() ** 2, min=1e-10).log10()
    torch.maximum(log_spec, log_spec.max() - 8.0, out=log_spec)
    return log_spec.add_(4.0).div_(4.0)


class TranscribeEngine:
    def __init__(self, model: whisper.Whisper, name: str) -> None:
        self.model = model
        self.name = name
        self.fp16 = model.device.type == "cuda"  # fp16 on GPU; whisper only supports fp32 on the CPU

    @property
    def device(self) -> torch.device:
        return self.model.device

    def to(self, device: str | torch.device) -> TranscribeEngine:
        """Move the loaded model (a worker loads on the CPU, then moves it to the GPU after a snapshot restore)."""
        self.model.to(device)
        self.fp16 = self.model.device.type == "cuda"
        return self

    def run(self, input_path: Path | None, params: BaseModel, out_dir: Path, progress: ProgressFn) -> EngineResult:
        assert isinstance(params, TranscribeParams) and input_path is not None
        progress(0.0, "decoding")
        samples = audio.decode(input_path, sample_rate=SAMPLE_RATE, mono=True)[0]
        duration = len(samples) / SAMPLE_RATE
        progress(DECODE_SHARE, "transcribing")
        decoded = _SegmentsAsDecoded(params.word_timestamps)
        with _TRANSCRIBE_LOCK, _whisper_hooks(progress, DECODE_SHARE, decoded):
            result = whisper.transcribe(
                self.model,
                samples,
                verbose=None,
                language=params.language,
                task=params.task,
                word_timestamps=params.word_timestamps,
                initial_prompt=params.initial_prompt,
                temperature=params.temperatures(),
                fp16=self.fp16,
            )
        segments = [_segment(raw, params.word_timestamps) for raw in result["segments"]]
        segments = [segment for segment in segments if segment.text]
        language = str(result["language"])

        outputs = write_transcript(out_dir, segments, language=language, task=params.task, model=self.name,
                                   duration=duration, emit=decoded.seen == 0)  # fmt: skip
        progress(1.0, "done")
        return EngineResult(outputs=outputs, metrics={"audio_seconds": duration})


def _segment(raw: dict[str, Any], with_words: bool) -> Segment:
    start = float(raw["start"])
    words = None
    if with_words:
        words = tuple(
            Word(word=str(w["word"]), start=float(w["start"]), end=float(w["end"]), probability=float(w["probability"]))
            for w in raw.get("words", [])
        )
    decoder = DecoderStats(
        seek=int(raw["seek"]),
        tokens=tuple(int(token) for token in raw["tokens"]),
        temperature=float(raw["temperature"]),
        avg_logprob=float(raw["avg_logprob"]),
        compression_ratio=float(raw["compression_ratio"]),
        no_speech_prob=float(raw["no_speech_prob"]),
    )
    return Segment(
        start=start, end=max(start, float(raw["end"])), text=str(raw["text"]).strip(), words=words, decoder=decoder
    )


def build_engine(
    model_key: str, weights_dir: Path, *, device: str | None = None, sha256: str | None = None
) -> TranscribeEngine | FasterWhisperEngine:
    """Load `whisper/<name>` from `weights_dir/whisper/<name>/`, or hand `faster-whisper/<name>` keys to
    inference.transcribe_ct2 (the registry's one factory for the transcribe task).

    Official names are checked against whisper's own sha256 and get their alignment heads. Other checkpoints
    (`<name>.pt` in whisper's format) are checked against `sha256`, else against their pin in models.lock: an
    unpinned checkpoint is never loaded.
    """
    if model_key.startswith("faster-whisper/"):
        from inference import transcribe_ct2  # CTranslate2 is loaded only by workers that run it

        if sha256 is not None:
            raise ValueError("faster-whisper weights are checked against their models.lock pins, not a sha256 argument")
        return transcribe_ct2.build_engine(model_key, weights_dir, device=device)
    name = model_key.removeprefix("whisper/")
    folder = Path(weights_dir) / model_key
    checkpoint = official_checkpoint(name, folder)
    if checkpoint is None:
        if sha256 is None:
            pins = {model_file.path: model_file.sha256 for model_file in load_lock().get(model_key).files}
            sha256 = pins.get(f"{name}.pt")
        if not sha256:
            raise ValueError(f"{name} is not an official whisper model and models.lock pins no {name}.pt")
        checkpoint = Checkpoint(path=folder / f"{name}.pt", sha256=sha256, alignment_heads=None)
    elif sha256 is not None and sha256 != checkpoint.sha256:
        raise ValueError(f"sha256 given for {name} differs from the official one")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return TranscribeEngine(load_checkpoint(checkpoint, device), name)
