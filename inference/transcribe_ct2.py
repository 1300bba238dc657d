"""Speech to text with faster-whisper (Whisper on CTranslate2): transcript.json / .txt / .srt / .vtt.

Weights: `weights_dir/faster-whisper/<name>/` holds a CTranslate2 conversion (model.bin, config.json,
tokenizer.json, vocabulary.*, preprocessor_config.json for 128-mel models) as `studio models pull` writes it. Every
file is checked against its models.lock pin before loading, and faster-whisper is given the folder path, so it
never reaches the hub (a name or a missing tokenizer.json would make it download).

Precision: float16 on CUDA, int8 on the CPU (CTranslate2 quantizes the fp16/fp32 weights at load time).

Decoding, faster-whisper's own two modes:
- sequential (`WhisperModel.transcribe`): audio up to one 30 s window, or any length with batch_size=1. Windows
  follow each other, each conditioned on the previous text, with temperature fallback on windows that fail the
  compression-ratio / log-prob checks.
- batched (`BatchedInferencePipeline`): audio longer than 30 s with batch_size > 1 (default 8). Silero VAD cuts the
  audio into speech chunks of at most 30 s that are decoded `batch_size` at a time, without conditioning on the
  previous text, at the first temperature only (faster-whisper does no fallback in this mode). On a GPU this is
  the fast path (published: ~4x faster than sequential for large-v2).
Silero VAD (the ONNX model ships in the faster-whisper wheel) is on by default; with it off, long audio is cut into
fixed 30 s windows for batching.

Memory (`transcribe_ct2_bounded` calls the library without its whole-input VAD and batching copies, with the same
results): Silero VAD runs one 10000-window run (23 MB) at a time instead of on two whole-input copies.
Sequential decoding then holds the speech concatenated, as the library does, and its log-mel, which
`ChunkedFeatureExtractor` computes 60 s at a time (the library's numpy STFT holds every frame's spectrum at once,
about 20 MB per audio minute): the host holds the 16 kHz samples (3.8 MB per minute), the speech (at most as much)
and the mel (1.9 MB per minute at 80 mels). Batched decoding calls the library's pipeline once per batch, so it
holds one batch's audio and features (<= 15 + 15 MB at batch 8) where the library would concatenate all the
speech and stack every chunk's features. What is left grows with the chunks in a batch, not with the input:
CTranslate2's working memory, mostly beam-search state (5 beams per chunk, each attending over the chunk's 1500
encoder frames in every decoder layer), measured at ~75 MB per chunk for tiny.en on the CPU. A 1-minute input
fills a batch with 2 chunks, ~4 minutes of speech with 8, so the peak climbs until then and stays flat after,
but for the samples (figures: docs/COSTS.md). Segments are streamed to the writers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.feature_extractor import FeatureExtractor
from pydantic import BaseModel

from inference import audio
from inference.base import EngineResult, ProgressFn
from inference.models import ModelsLock, load_lock, status
from inference.params import FASTER_WHISPER_BATCH_SIZE, TranscribeParams
from inference.transcribe_ct2_bounded import transcribe_batched, transcribe_sequential
from inference.transcript import DecoderStats, Segment, Word, write_transcript

SAMPLE_RATE = 16_000
WINDOW_SECONDS = 30  # whisper's window; longer audio goes through the batched pipeline
DECODE_SHARE = 0.05  # progress fraction given to decoding the input; transcription gets the rest
FEATURE_FRAMES_PER_CHUNK = 6000  # 60 s of audio per STFT chunk


class ChunkedFeatureExtractor(FeatureExtractor):
    """faster-whisper's log-mel, computed `frames_per_chunk` frames at a time (equal to the library's output).

    The library pads a copy of the waveform and holds the windowed frames and the complex STFT of the whole input;
    here the padded signal is virtual (zero padding, then reflect padding, by index) and only one chunk's STFT
    exists at a time. The global max (for the 8-decade floor) is applied once all chunks are in.
    """

    def __init__(self, frames_per_chunk: int = FEATURE_FRAMES_PER_CHUNK, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.frames_per_chunk = frames_per_chunk

    def __call__(self, waveform: np.ndarray, padding: int = 160, chunk_length: int | None = None) -> np.ndarray:
        if chunk_length is not None:  # the library's side effect, kept: later calls see the same window size
            self.n_samples = chunk_length * self.sampling_rate
            self.nb_max_frames = self.n_samples // self.hop_length
        waveform = np.asarray(waveform, dtype=np.float32)
        n_fft, hop = self.n_fft, self.hop_length
        length, total = waveform.shape[0], waveform.shape[0] + padding
        n_frames = total // hop  # the library's STFT has total // hop + 1 frames and drops the last
        if total <= n_fft // 2 or n_frames == 0:  # numpy's reflect padding of a tiny input: the library's own path
            return super().__call__(waveform, padding=padding)
        window = np.hanning(n_fft + 1)[:-1].astype("float32")
        log_spec = np.empty((self.mel_filters.shape[0], n_frames), dtype=np.float32)
        for first in range(0, n_frames, self.frames_per_chunk):
            last = min(n_frames, first + self.frames_per_chunk)
            # Positions in the centred signal: the waveform zero-padded by `padding`, then reflect-padded by
            # n_fft // 2 at both ends. One frame more than kept, as the library's STFT has it.
            index = np.arange(first * hop, last * hop + n_fft) - n_fft // 2
            index = np.where(index < 0, -index, index)
            index = np.where(index >= total, 2 * (total - 1) - index, index)
            chunk = np.zeros(index.shape[0], dtype=np.float32)
            inside = index < length
            chunk[inside] = waveform[index[inside]]
            stft = self.stft(chunk, n_fft, hop, window=window, center=False, return_complex=True).astype("complex64")
            magnitudes = np.abs(stft[..., : last - first]) ** 2
            log_spec[:, first:last] = np.log10(np.clip(self.mel_filters @ magnitudes, a_min=1e-10, a_max=None))
        np.maximum(log_spec, log_spec.max() - 8.0, out=log_spec)
        return (log_spec + 4.0) / 4.0


def default_compute_type(device: str) -> str:
    return "float16" if device.split(":")[0] == "cuda" else "int8"


def load_model(folder: Path, device: str, compute_type: str | None = None, cpu_threads: int = 0) -> WhisperModel:
    """faster-whisper's model from a verified folder. CTranslate2 fixes the device and precision when it builds the
    model (there is no move): a model built where CTranslate2 sees no GPU is a CPU model for good."""
    model = WhisperModel(
        str(folder),
        device=device,
        compute_type=compute_type or default_compute_type(device),
        cpu_threads=cpu_threads,
        local_files_only=True,
    )
    model.feature_extractor = ChunkedFeatureExtractor(**model.feat_kwargs)
    return model


class FasterWhisperEngine:
    def __init__(self, model: WhisperModel, model_key: str, folder: Path, device: str) -> None:
        self.model = model
        self.model_key = model_key
        self.folder = folder
        self.device = device  # what the model was built on: CTranslate2 raises rather than build elsewhere

    def to(self, device: str) -> FasterWhisperEngine:
        """Rebuild the model on `device` (a Modal worker: on the GPU in float16 after the snapshot restore), from the
        folder already verified against models.lock; the old model is dropped first, so both are never held."""
        if device != self.device:
            del self.model
            self.model = load_model(self.folder, device)
            self.device = device
        return self

    def run(self, input_path: Path | None, params: BaseModel, out_dir: Path, progress: ProgressFn) -> EngineResult:
        assert isinstance(params, TranscribeParams) and input_path is not None
        progress(0.0, "decoding")
        samples = audio.decode(input_path, sample_rate=SAMPLE_RATE, mono=True)[0]
        duration = len(samples) / SAMPLE_RATE
        progress(DECODE_SHARE, "transcribing")
        raw_segments, info = self.transcribe(samples, params)

        def ours() -> Iterator[Segment]:
            reached = 0.0  # audio seconds transcribed so far; never reported backwards
            for raw in raw_segments:
                segment = _segment(raw, params.word_timestamps, duration)
                reached = max(reached, segment.end)
                progress(DECODE_SHARE + (1.0 - DECODE_SHARE) * reached / max(duration, 1e-9), None)
                if segment.text:
                    yield segment

        outputs = write_transcript(
            out_dir, ours(), language=info.language, task=params.task, model=self.model_key, duration=duration
        )
        progress(1.0, "done")
        return EngineResult(
            outputs=outputs, metrics={"audio_seconds": duration, "speech_seconds": float(info.duration_after_vad)}
        )

    def transcribe(self, samples: np.ndarray, params: TranscribeParams) -> tuple[Iterable[Any], Any]:
        """faster-whisper's (segments generator, info) for 16 kHz mono samples, in the mode the params ask for."""
        duration = len(samples) / SAMPLE_RATE
        options = transcribe_options(params, duration)
        if is_batched(params, duration):
            return transcribe_batched(self.model, samples, **options)
        return transcribe_sequential(self.model, samples, **options)


def is_batched(params: TranscribeParams, duration: float) -> bool:
    return duration > WINDOW_SECONDS and (params.batch_size or FASTER_WHISPER_BATCH_SIZE) > 1


def transcribe_options(params: TranscribeParams, duration: float) -> dict[str, Any]:
    """The keyword arguments our params mean for faster-whisper's transcribe (either mode); the rest stay at the
    library's defaults (beam size 5, its thresholds)."""
    vad_filter = True if params.vad_filter is None else params.vad_filter
    options: dict[str, Any] = {
        "language": params.language,
        "task": params.task,
        "word_timestamps": params.word_timestamps,
        "initial_prompt": params.initial_prompt,
        "temperature": list(params.temperatures()),
        "vad_filter": vad_filter,
    }
    if is_batched(params, duration):
        options["batch_size"] = params.batch_size or FASTER_WHISPER_BATCH_SIZE
        # The pipeline's default decodes text only, making each <= 30 s chunk one segment (one subtitle cue);
        # with timestamp tokens the model splits chunks into sentence-sized segments, as in sequential mode.
        options["without_timestamps"] = False
        if not vad_filter:  # the batched pipeline needs chunk boundaries: plain 30 s windows
            starts = np.arange(0.0, duration, WINDOW_SECONDS)
            options["clip_timestamps"] = [
                {"start": float(start), "end": float(min(duration, start + WINDOW_SECONDS))} for start in starts
            ]
    return options


def _segment(raw: Any, with_words: bool, duration: float) -> Segment:
    """Our Segment from faster-whisper's, with times clamped into the audio: a last window's timestamp tokens can
    point past the end of the input (seen: 49.1 s on 46.4 s of audio), and a subtitle cue must not."""

    def clamp(seconds: float) -> float:
        return min(max(0.0, float(seconds)), duration)

    start = clamp(raw.start)
    words = None
    if with_words:
        words = tuple(
            Word(word=str(w.word), start=clamp(w.start), end=max(clamp(w.start), clamp(w.end)),
                 probability=float(w.probability))
            for w in raw.words or []
        )  # fmt: skip
    decoder = DecoderStats(
        seek=int(raw.seek),
        tokens=tuple(int(token) for token in raw.tokens),
        temperature=float(raw.temperature or 0.0),  # Optional in the library's type; both modes set it
        avg_logprob=float(raw.avg_logprob),
        compression_ratio=float(raw.compression_ratio),
        no_speech_prob=float(raw.no_speech_prob),
    )
    return Segment(
        start=start, end=max(start, clamp(raw.end)), text=str(raw.text).strip(), words=words, decoder=decoder
    )


def verify_weights(model_key: str, weights_dir: Path, lock: ModelsLock | None = None) -> Path:
    """The model's folder once every file in it matches its models.lock pin; raises before anything is loaded."""
    lock = lock or load_lock()
    entry = lock.get(model_key)
    (state,) = status(Path(weights_dir), ModelsLock(version=lock.version, models={model_key: entry}), verify=True)
    folder = Path(weights_dir) / model_key
    if state.state in ("missing", "partial"):
        missing = [f.path for f in state.files if f.state == "missing"]
        raise FileNotFoundError(f"{folder} lacks {', '.join(missing)}: pull the weights first (studio models pull)")
    if state.state != "present":
        corrupt = [f.path for f in state.files if f.state == "corrupt"]
        detail = f"{', '.join(corrupt)} do not match their sha256 pins" if corrupt else state.detail
        raise RuntimeError(f"{model_key}: {detail} ({state.state})")
    return folder


def build_engine(
    model_key: str,
    weights_dir: Path,
    *,
    device: str | None = None,
    compute_type: str | None = None,
    cpu_threads: int = 0,
) -> FasterWhisperEngine:
    """Load `faster-whisper/<name>` from `weights_dir/faster-whisper/<name>/` after checking it against models.lock, on
    `device` (None: CUDA when CTranslate2 sees a GPU), float16 on CUDA and int8 on the CPU unless `compute_type` says.

    cpu_threads=0 keeps CTranslate2's default (4, or OMP_NUM_THREADS).
    """
    folder = verify_weights(model_key, weights_dir)
    device = device or ("cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu")
    return FasterWhisperEngine(load_model(folder, device, compute_type, cpu_threads), model_key, folder, device)
