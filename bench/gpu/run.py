"""GPU benchmark: every CUDA path of our engines, on the real architectures with random weights, in one command.

    python -m bench.gpu.run [--tiny] [--only separate transcribe generate] [--json bench-gpu.json]

Compute time does not depend on weight values, so each engine's real architecture is built with random weights,
saved in the library's own format and loaded and run THROUGH OUR ENGINE CLASSES (inference/*.py `build_engine` and
`.run`), exactly as a worker does:
- separate: htdemucs (the release's HTDemucs arguments) and the 4-model bag htdemucs_ft on a 4-minute stereo
  44.1 kHz input, fp32, our window batching at 1/2/4/8 windows per apply_model call; and the stems of a short clip
  on CUDA against the CPU path (max absolute difference of the written 24-bit files, full scale 1.0).
- separate_roformer: the three RoFormer rows of models.lock at their published configs (random weights under the
  release's parameter names), the same 4-minute track at 1/2/4/8 windows per forward in the engine's CUDA precision
  (fp16 autocast), after the stems of a short clip on CUDA in fp32 against the CPU path.
- transcribe: the large-v3-turbo architecture through openai-whisper, fp16. Random weights decode garbage of any
  length, so the text decoder is scripted (tests/tiny_whisper.py): every 30 s window decodes exactly
  TOKENS_PER_WINDOW text tokens plus its timestamps and end token, which the row checks in the transcript. Whisper's
  previous-text prompt is turned off for the timed run (it would shift the scripted positions); it adds one prefill
  of at most 224 tokens per window, which the figure leaves out. The faster-whisper (CTranslate2) engine gets its own
  row: the same scripted model converted to CTranslate2, run through FasterWhisperEngine (batched, VAD off); on
  CUDA only where CUDA 12's cuBLAS loads (ctranslate2 4.8.5 needs it), else a "cannot run" row that says why.
- generate: Stable Audio Open 1.0's DiT + Oobleck VAE + T5-base at their published configs, fp16 on CUDA, 100 steps,
  47 s, 1 and 4 variants (classifier-free guidance at the default scale, so the DiT runs 2 x variants per step).
- song: ACE-Step 1.5 XL turbo (the checkpoint models.lock names) through the song engine (inference/song.py), bf16 on
  CUDA, the turbo default of 8 steps, one generated minute, 1 and 4 variants (turbo: no guidance, one DiT pass per
  variant per step). DiT: hidden 2560, 32 layers, 32 heads, condition width 2048 (ACE-Step/acestep-v15-xl-base-
  diffusers' card), intermediate 9728 and 8 key/value heads (a third-party XL card, scragnog/ace-step-1.5-gguf-merge-
  models: ~4.7B parameters); condition encoder, audio tokenizer and detokenizer at diffusers' class defaults; a
  Qwen3-0.6B-sized text encoder; an Oobleck VAE with the pipeline's 1920-sample hop at 48 kHz. The note prices a
  3-minute song.

Every row: device, precision, seconds per unit, x real time (audio seconds per compute second), peak GPU memory
(torch's allocator peak, reset per row) and an ESTIMATED USD per unit on Modal's A10G: H200 seconds x
`--a10g-slowdown` x A10G_USD_PER_SECOND (see that constant's comment for the conversion assumed). One untimed
warm-up call per engine comes first (CUDA context, cuDNN/cuBLAS heuristics), so rows are steady-state figures;
cold start is in docs/COSTS.md.

`--tiny` runs the same code with tiny configs and inputs on the CPU in seconds (tests/test_bench_gpu.py runs it).
`bench/gpu/remote.sh` carries the wheels this needs to the GPU machine and runs it there.

Other engines: add a function to BENCHES that returns Rows.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import functools
import hashlib
import importlib
import json
import math
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from bench.gpu import wheels

# Modal's A10G price (USD 1.10 per hour; docs/COSTS.md). A10G time is ESTIMATED from H200 time: the H200 has about
# 8x the A10G's dense fp16 tensor throughput (989 vs 125 TFLOP/s) and memory bandwidth (4.8 vs 0.6 TB/s), but these
# workloads (batch 1-8, 24-layer models) leave much of an H200 idle, so we assume a 6x slowdown, not 8x.
A10G_USD_PER_SECOND = 0.000306
DEFAULT_A10G_SLOWDOWN = 6.0

SEPARATE_BATCHES = (1, 2, 4, 8)
GENERATE_VARIANTS = (1, 4)
SONG_VARIANTS = (1, 4)
SONG_MINUTES_PER_SONG = 3.0  # what "a song" is priced as in the row's note


@dataclass
class Row:
    engine: str
    case: str
    device: str = ""
    precision: str = ""
    unit: str = ""
    seconds_per_unit: float | None = None
    realtime_x: float | None = None  # audio seconds handled (or made) per second of compute
    peak_gpu_mib: float | None = None
    usd_per_unit_a10g_estimate: float | None = None
    check: str = ""  # what the row verified about the output
    note: str = ""  # a skip, an error or a caveat


@dataclass(frozen=True)
class Setup:
    tiny: bool
    device: torch.device
    work: Path
    a10g_slowdown: float
    separate_batches: tuple[int, ...] = SEPARATE_BATCHES
    extra: dict[str, Any] = field(default_factory=dict)

    def row(self, engine: str, case: str, precision: str, unit: str, seconds: float, units: float,
            audio_seconds: float, peak_mib: float | None, **rest: str) -> Row:  # fmt: skip
        per_unit = seconds / units
        usd = per_unit * self.a10g_slowdown * A10G_USD_PER_SECOND if self.device.type == "cuda" else None
        case = f"{case} [tiny config]" if self.tiny else case
        return Row(engine=engine, case=case, device=_device_name(self.device), precision=precision, unit=unit,
                   seconds_per_unit=per_unit, realtime_x=audio_seconds / seconds, peak_gpu_mib=peak_mib,
                   usd_per_unit_a10g_estimate=usd, **rest)  # fmt: skip


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})"


def _precision(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, str(dtype))


def _timed(device: torch.device, call: Callable[[], Any]) -> tuple[float, float | None]:
    """(seconds, peak GPU MiB or None on CPU) of one call, the allocator's peak reset first."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return seconds, peak


def _no_progress(fraction: float, stage: str | None = None) -> None:
    return None


# ---------------------------------------------------------------------------------------------------------------
# separate


def _htdemucs(tiny: bool, seed: int) -> torch.nn.Module:
    from demucs.htdemucs import HTDemucs

    from inference.params import DEMUCS_SOURCES
    from tests.tiny_demucs import tiny_htdemucs

    if tiny:
        return tiny_htdemucs(seed)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The release htdemucs: HTDemucs's defaults, a 512-channel bottleneck before the transformer, 7.8 s segments.
        return HTDemucs(list(DEMUCS_SOURCES["htdemucs"]), bottom_channels=512, segment=Fraction(39, 5))


def _write_demucs_repo(weights_dir: Path, name: str, models: int, tiny: bool) -> None:
    """A demucs repo as `studio models pull` lays it out: one `.th` per model, and the bag yaml (htdemucs_ft's
    weights matrix: model i keeps only source i)."""
    import yaml

    from tests.tiny_demucs import save_demucs

    folder = weights_dir / "demucs" / name
    folder.mkdir(parents=True, exist_ok=True)
    sigs = [f"{index:04d}beef" for index in range(models)]
    for index, sig in enumerate(sigs):
        save_demucs(_htdemucs(tiny, index), folder, sig)
    bag: dict[str, Any] = {"models": sigs}
    if models == 4:  # htdemucs_ft; a smaller --tiny bag averages its models
        bag["weights"] = [[1.0 if source == index else 0.0 for source in range(4)] for index in range(models)]
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(bag))


def _stems(folder: Path) -> dict[str, np.ndarray]:
    return {path.stem: sf.read(str(path), dtype="float32")[0] for path in sorted(folder.glob("*.wav"))}


def bench_separate(setup: Setup) -> list[Row]:
    from bench.inference.separate import make_input
    from inference.params import SeparateParams
    from inference.separate import build_engine

    minutes, check_minutes = (0.06, 0.04) if setup.tiny else (4.0, 0.2)
    # --tiny: 1.5 s windows (the tiny model's segment stride), so its 3.6 s input still makes several windows per
    # batch, and a bag of 2 (the same BagOfModels path as 4). Production's windows and bag otherwise.
    windows = {"chunk_seconds": 1.5, "crossfade_seconds": 0.25} if setup.tiny else {}
    bag = 2 if setup.tiny else 4
    tolerance = 2e-3  # full scale 1.0: TF32 convolutions (cuDNN's default on CUDA) against fp32 on the CPU
    track = make_input(minutes, setup.work / "separate")
    clip = make_input(check_minutes, setup.work / "separate-check")
    rows = []
    for name, models in (("htdemucs", 1), ("htdemucs_ft", bag)):
        _write_demucs_repo(setup.work / "weights", name, models, setup.tiny)
        params = SeparateParams(model=name)  # the defaults users get: shifts=1, overlap 0.25
        # shifts=0 for the equality check: a shift is a random offset, drawn anew on each call.
        exact = SeparateParams(model=name, shifts=0)
        engine = build_engine(f"demucs/{name}", setup.work / "weights", device=str(setup.device), **windows)
        # The warm-up call doubles as the CUDA side of the equality check.
        engine.run(clip, exact, setup.work / f"{name}-check-device", _no_progress)
        reference = build_engine(f"demucs/{name}", setup.work / "weights", device="cpu", **windows)
        reference.run(clip, exact, setup.work / f"{name}-check-cpu", _no_progress)
        device_stems = _stems(setup.work / f"{name}-check-device")
        cpu_stems = _stems(setup.work / f"{name}-check-cpu")
        worst = max(float(np.abs(device_stems[s] - cpu_stems[s]).max()) for s in cpu_stems)
        verdict = "ok" if worst <= tolerance and device_stems.keys() == cpu_stems.keys() else "FAILED"
        check = (f"{verdict}: {check_minutes * 60:g} s clip {setup.device.type} vs cpu max |diff| {worst:.1e} "
                 f"<= {tolerance:g}")  # fmt: skip
        del reference
        precision = _precision(next(engine.model.parameters()).dtype)
        for batch in setup.separate_batches:
            engine.batch_windows = batch
            out = setup.work / f"{name}-b{batch}"
            seconds, peak = _timed(setup.device, functools.partial(engine.run, track, params, out, _no_progress))
            rows.append(setup.row("separate", f"{name} ({models} model{'s' * (models > 1)}), batch {batch}",
                                  precision, "audio minute", seconds, minutes, minutes * 60, peak, check=check,
                                  note=_window_note(engine, track, batch)))  # fmt: skip
        del engine
        _free(setup.device)
    return rows


def _window_note(engine: Any, track: Path, batch: int) -> str:
    """How many windows the track makes and how many run per call: batch 8 on 4 minutes is batch 4 in effect."""
    seconds = sf.info(str(track)).duration
    windows = max(1, math.ceil((seconds * engine.samplerate - engine.crossfade) / engine.chunk))
    return f"{windows} windows of {engine.chunk / engine.samplerate:.1f} s, up to {batch} per apply_model call"


# RoFormer models (inference/separate_roformer.py): the default vocals model and the other two pinned rows.
ROFORMER_KEYS = ("roformer/mel-roformer-kim-vocals", "roformer/bs-roformer-viperx-1297",
                 "roformer/bs-roformer-zfturbo-4stem")  # fmt: skip


def _install_roformer(work: Path, key: str, tiny: bool) -> Path:
    """The model's published config (tests/data/roformer; --tiny: widths and chunk shrunk as tests/tiny_roformer.py
    does) with random weights under the release's parameter names, laid out and pinned in a models.lock as `studio
    models pull` leaves them (build_engine checks every sha256). Returns the lock's path."""
    import yaml

    from inference.separate_roformer import build_network, load_config_yaml, read_config
    from tests.tiny_roformer import DATA, PUBLISHED, lock_text, tiny_config

    published = PUBLISHED[key]
    folder = work / "weights" / key
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / published.config
    if tiny:
        config = tiny_config(published)
    else:
        config = load_config_yaml((DATA / published.config).read_text())
        config["model"].pop("sage_attention", None)
    config_path.write_text(yaml.safe_dump(json.loads(json.dumps(config)), sort_keys=False))
    torch.manual_seed(0)
    torch.save(build_network(read_config(config_path)).state_dict(), folder / published.checkpoint)
    files = {name: (folder / name).read_bytes() for name in (published.checkpoint, published.config)}
    lock = work / "models.lock"
    # The url is never fetched: the files are already in place, as after a pull.
    rows = lock_text("http://127.0.0.1:9", {key: files})
    lock.write_text(rows if not lock.exists() else lock.read_text() + rows.removeprefix("version = 1\n"))
    return lock


def bench_separate_roformer(setup: Setup) -> list[Row]:
    """Each RoFormer model on a 4-minute stereo track at 1/2/4/8 windows per forward, the engine's CUDA precision
    (fp16 autocast, as MSST's demix runs these models), after a CUDA-vs-CPU equality check in fp32 on a short clip."""
    from bench.inference.separate import make_input
    from inference.models import load_lock
    from inference.params import SeparateParams
    from inference.separate_roformer import build_engine

    minutes, check_minutes = (0.06, 0.04) if setup.tiny else (4.0, 0.1)
    tolerance = 2e-3  # full scale 1.0, on the written 24-bit files
    track = make_input(minutes, setup.work / "separate")
    clip = make_input(check_minutes, setup.work / "separate-check")
    rows = []
    for key in ROFORMER_KEYS:
        lock = load_lock(_install_roformer(setup.work, key, setup.tiny))
        name = key.removeprefix("roformer/")
        params = SeparateParams(model=name)
        engine = build_engine(key, setup.work / "weights", device=str(setup.device), lock=lock, precision="fp32")
        engine.run(clip, params, setup.work / f"{name}-check-device", _no_progress)  # also the warm-up
        reference = build_engine(key, setup.work / "weights", device="cpu", lock=lock)
        reference.run(clip, params, setup.work / f"{name}-check-cpu", _no_progress)
        del reference
        device_stems = _stems(setup.work / f"{name}-check-device")
        cpu_stems = _stems(setup.work / f"{name}-check-cpu")
        worst = max(float(np.abs(device_stems[s] - cpu_stems[s]).max()) for s in cpu_stems)
        verdict = "ok" if worst <= tolerance and device_stems.keys() == cpu_stems.keys() else "FAILED"
        check = (f"{verdict}: {check_minutes * 60:g} s clip {setup.device.type} fp32 vs cpu max |diff| {worst:.1e} "
                 f"<= {tolerance:g}")  # fmt: skip
        engine.configure(precision=None)  # the production default from here on
        chunk = engine.config.chunk_size
        for batch in setup.separate_batches:
            engine.configure(batch_windows=batch)
            out = setup.work / f"{name}-b{batch}"
            seconds, peak = _timed(setup.device, functools.partial(engine.run, track, params, out, _no_progress))
            hop = chunk // engine.config.num_overlap / engine.samplerate
            note = f"{chunk / engine.samplerate:.1f} s windows every {hop:.1f} s, up to {batch} per forward"
            rows.append(setup.row("separate", f"{name}, batch {batch}", engine.precision, "audio minute", seconds,
                                  minutes, minutes * 60, peak, check=check, note=note))  # fmt: skip
        del engine
        _free(setup.device)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# transcribe

TOKENS_PER_WINDOW = 100  # ~150 words a minute of speech is ~75 words, ~100 tokens, per 30 s window
TINY_TOKENS_PER_WINDOW = 8


def _turbo_dims(tiny: bool) -> Any:
    from whisper.model import ModelDimensions

    from tests.tiny_whisper import DIMS

    if tiny:
        return DIMS
    # large-v3-turbo: large-v3's 32-layer encoder and 128 mel bins, a 4-layer decoder (whisper's own checkpoint).
    return ModelDimensions(
        n_mels=128, n_audio_ctx=1500, n_audio_state=1280, n_audio_head=20, n_audio_layer=32,
        n_vocab=51866, n_text_ctx=448, n_text_state=1280, n_text_head=20, n_text_layer=4,
    )  # fmt: skip


@contextlib.contextmanager
def _without_previous_text_prompt() -> Iterator[None]:
    """whisper.transcribe with condition_on_previous_text=False, for the engine's call (see the module docstring)."""
    import whisper

    original = whisper.transcribe
    whisper.transcribe = functools.partial(original, condition_on_previous_text=False)
    try:
        yield
    finally:
        whisper.transcribe = original


def _scripted_turbo(setup: Setup, text_ctx: int | None = None) -> tuple[Any, int]:
    """The scripted large-v3-turbo-shaped whisper both transcribe rows run (tiny dims with --tiny), and the text
    tokens it decodes per window. `text_ctx` widens the decoder's positions (faster-whisper decodes up to 448)."""
    from tests.tiny_whisper import scripted_whisper

    tokens = TINY_TOKENS_PER_WINDOW if setup.tiny else TOKENS_PER_WINDOW
    dims = _turbo_dims(setup.tiny)
    if text_ctx is not None:
        dims = dataclasses.replace(dims, n_text_ctx=text_ctx)
    # Distinct text tokens, so the transcript does not compress well enough to trigger whisper's temperature fallback.
    return scripted_whisper(dims, list(range(1000, 1000 + 7 * tokens, 7)), 29.0, seed=0), tokens


def _segments_check(out: Path, minutes: float, tokens: int) -> str:
    segments = json.loads((out / "transcript.json").read_text())["segments"]
    windows = math.ceil(minutes * 2)
    verdict = "ok" if len(segments) == windows else "FAILED"
    return f"{verdict}: {len(segments)} segments for {windows} windows of {tokens} scripted text tokens each"


def bench_transcribe(setup: Setup) -> list[Row]:
    from bench.inference.common import voiced_bursts
    from inference.params import TranscribeParams
    from inference.transcribe import build_engine

    minutes = 1.0 if setup.tiny else 4.0
    name = "turbo-random"
    folder = setup.work / "weights" / "whisper" / name
    folder.mkdir(parents=True, exist_ok=True)
    model, tokens = _scripted_turbo(setup)
    state = {key: value.half() for key, value in model.state_dict().items()}  # fp16 on disk, as whisper ships
    torch.save({"dims": asdict(model.dims), "model_state_dict": state}, folder / f"{name}.pt")
    del model, state
    sha256 = hashlib.sha256((folder / f"{name}.pt").read_bytes()).hexdigest()
    engine = build_engine(f"whisper/{name}", setup.work / "weights", device=str(setup.device), sha256=sha256)
    params = TranscribeParams()
    warmup = voiced_bursts(0.5, setup.work / "transcribe-warmup")
    track = voiced_bursts(minutes, setup.work / "transcribe")
    out = setup.work / "transcribe-out"
    out.mkdir()
    (setup.work / "transcribe-warmup-out").mkdir()
    with _without_previous_text_prompt():
        engine.run(warmup, params, setup.work / "transcribe-warmup-out", _no_progress)
        seconds, peak = _timed(setup.device, functools.partial(engine.run, track, params, out, _no_progress))
    note = "no previous-text prompt (one <=224-token prefill per window left out)"
    row = setup.row("transcribe", f"openai-whisper large-v3-turbo arch, {tokens} tokens/30 s",
                    "fp16" if engine.fp16 else "fp32", "audio minute", seconds, minutes, minutes * 60, peak,
                    check=_segments_check(out, minutes, tokens), note=note)  # fmt: skip
    del engine
    _free(setup.device)
    return [row]


FASTER_WHISPER_CASE = "faster-whisper (CTranslate2) large-v3-turbo arch"


def bench_faster_whisper(setup: Setup) -> list[Row]:
    """The same scripted model as the openai-whisper row, converted to CTranslate2 (tests/ct2_whisper.py) and run
    through our FasterWhisperEngine: batched decoding of fixed 30 s windows (VAD off: the input is not speech)."""
    reason = ctranslate2_cannot_run(setup.device)
    if reason is not None:
        return [Row(engine="transcribe", case=FASTER_WHISPER_CASE, device=_device_name(setup.device),
                    note=f"cannot run: {reason}")]  # fmt: skip
    from bench.inference.common import voiced_bursts
    from inference.models import DEFAULT_LOCK_PATH, LOCK_ENV
    from inference.params import TranscribeParams
    from inference.transcribe_ct2 import build_engine
    from tests.ct2_whisper import write_ct2

    minutes = 1.0 if setup.tiny else 4.0
    model_key = "faster-whisper/turbo-random"
    folder = setup.work / "weights" / model_key
    model, tokens = _scripted_turbo(setup, text_ctx=448)
    write_ct2(model, folder)
    del model
    lock = setup.work / "models.lock"
    lock.write_text(DEFAULT_LOCK_PATH.read_text() + _lock_entry(model_key, folder))
    with _environment(LOCK_ENV, str(lock)):
        engine = build_engine(model_key, setup.work / "weights", device=setup.device.type)
    params = TranscribeParams(model="faster-whisper/large-v3-turbo", vad_filter=False)
    warmup = voiced_bursts(0.5, setup.work / "faster-whisper-warmup")
    track = voiced_bursts(minutes, setup.work / "faster-whisper")
    out, warmup_out = setup.work / "faster-whisper-out", setup.work / "faster-whisper-warmup-out"
    out.mkdir()
    warmup_out.mkdir()
    engine.run(warmup, params, warmup_out, _no_progress)
    seconds, peak = _timed(setup.device, functools.partial(engine.run, track, params, out, _no_progress))
    # CTranslate2 allocates outside torch's allocator, so torch's peak would read ~0: no GPU memory figure.
    row = setup.row("transcribe", f"{FASTER_WHISPER_CASE}, {tokens} tokens/30 s", engine.model.model.compute_type,
                    "audio minute", seconds, minutes, minutes * 60, None, check=_segments_check(out, minutes, tokens),
                    note="batched (8), VAD off, beam 5")  # fmt: skip
    del engine
    return [row]


def _lock_entry(model_key: str, folder: Path) -> str:
    """A models.lock entry pinning every file of a model built here (what an operator adds for a custom model)."""
    entry = f'\n\n[models."{model_key}"]\ntask = "transcribe"\nsource = "bench/gpu/run.py"\nlicence = "MIT"\n'
    entry += "commercial_use = true\nenabled_by_default = false\n"
    for path in sorted(folder.iterdir()):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        entry += (f'\n[[models."{model_key}".files]]\npath = "{path.name}"\nurl = "http://127.0.0.1:9/{path.name}"\n'
                  f'sha256 = "{digest}"\n')  # fmt: skip
    return entry


@contextlib.contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name)
        else:
            os.environ[name] = previous


# ctranslate2 4.8.5 loads CUDA 12's cuBLAS by this name when it first runs on CUDA (the string is in its
# libctranslate2.so; it links the CUDA runtime statically and needs no cuDNN for Whisper).
CUBLAS_12 = "libcublas.so.12"


def ctranslate2_cannot_run(device: torch.device) -> str | None:
    """Why the faster-whisper row cannot run here, or None. On CUDA this LOADS CUDA 12's cuBLAS, as CTranslate2
    will: its own device count and compute types answer without it, so they would say "ok" where it cannot run."""
    try:
        import ctranslate2
        import faster_whisper  # noqa: F401
    except ImportError as exc:
        return missing_module(exc)
    if device.type != "cuda":
        return None
    try:
        load_cublas_12()
    except OSError as exc:
        return (f"ctranslate2 {ctranslate2.__version__} needs {CUBLAS_12} (CUDA 12 cuBLAS) and none loads here "
                f"({exc}); torch here is built for CUDA {torch.version.cuda}. "
                f"{wheels.CUBLAS_12_NOT_CARRIED}")  # fmt: skip
    if ctranslate2.get_cuda_device_count() < 1:
        return f"ctranslate2 {ctranslate2.__version__} sees no CUDA device"
    return None


def load_cublas_12() -> None:
    """Load CUDA 12's cuBLAS globally, so CTranslate2's later dlopen by soname finds it: from the loader's path, or
    from an installed nvidia-cublas-cu12 wheel (nvidia/cublas/lib), which CTranslate2 does not search itself."""
    try:
        ctypes.CDLL(CUBLAS_12, mode=ctypes.RTLD_GLOBAL)
        return
    except OSError as exc:
        first = exc
    for entry in sys.path:
        library = Path(entry or ".", "nvidia", "cublas", "lib")
        if (library / CUBLAS_12).is_file():
            ctypes.CDLL(str(library / "libcublasLt.so.12"), mode=ctypes.RTLD_GLOBAL)
            ctypes.CDLL(str(library / CUBLAS_12), mode=ctypes.RTLD_GLOBAL)
            return
    raise first


def missing_module(exc: ImportError) -> str:
    """What is missing and which carried wheel set brings it (bench/gpu/wheels.txt)."""
    name = (exc.name or "").split(".")[0]
    carried = wheels.sets_carrying(name)
    where = (f"its wheel travels in set {' / '.join(carried)} of bench/gpu/wheels.txt"
             if carried else "no wheel set in bench/gpu/wheels.txt carries it")  # fmt: skip
    return f"{exc} ({where})"


# ---------------------------------------------------------------------------------------------------------------
# generate


def _build_stable_audio_open(folder: Path) -> None:
    """stabilityai/stable-audio-open-1.0 at its published configs (transformer/, vae/, text_encoder/ = t5-base,
    projection_model/, scheduler/), random weights, saved in fp16 with `save_pretrained` like the hub snapshot."""
    from diffusers import (
        AutoencoderOobleck,
        CosineDPMSolverMultistepScheduler,
        StableAudioDiTModel,
        StableAudioPipeline,
        StableAudioProjectionModel,
    )
    from transformers import T5Config, T5EncoderModel

    from tests.tiny_diffusers import _t5_tokenizer

    torch.manual_seed(0)
    transformer = StableAudioDiTModel(
        sample_size=1024, in_channels=64, num_layers=24, attention_head_dim=64, num_attention_heads=24,
        num_key_value_attention_heads=12, out_channels=64, cross_attention_dim=768, time_proj_dim=256,
        global_states_input_dim=1536, cross_attention_input_dim=768,
    )  # fmt: skip
    vae = AutoencoderOobleck(
        encoder_hidden_size=128, downsampling_ratios=[2, 4, 4, 8, 8], channel_multiples=[1, 2, 4, 8, 16],
        decoder_channels=128, decoder_input_channels=64, audio_channels=2, sampling_rate=44100,
    )  # fmt: skip
    # t5-base; the tokenizer is a small trained stand-in padded to the same 128 tokens (prompt encoding is a tiny
    # share of the work either way).
    text_encoder = T5EncoderModel(
        T5Config(vocab_size=32128, d_model=768, d_ff=3072, d_kv=64, num_heads=12, num_layers=12, pad_token_id=0,
                 eos_token_id=1, decoder_start_token_id=0)
    )  # fmt: skip
    projection = StableAudioProjectionModel(text_encoder_dim=768, conditioning_dim=768, min_value=0, max_value=512)
    scheduler = CosineDPMSolverMultistepScheduler(
        solver_order=2, prediction_type="v_prediction", sigma_data=1.0, sigma_schedule="exponential",
        sigma_min=0.3, sigma_max=500,
    )  # fmt: skip
    pipeline = StableAudioPipeline(
        vae=vae, text_encoder=text_encoder, projection_model=projection, tokenizer=_t5_tokenizer(128),
        transformer=transformer, scheduler=scheduler,
    )  # fmt: skip
    pipeline.to(torch.float16).save_pretrained(folder)


def bench_generate(setup: Setup) -> list[Row]:
    from inference.generate import build_engine
    from inference.params import GenerateParams
    from tests.tiny_diffusers import STABLE_AUDIO_MAX_SECONDS, build_stable_audio

    folder = setup.work / "weights" / "stable-audio-open"
    if setup.tiny:
        build_stable_audio(folder)
    else:
        _build_stable_audio_open(folder)
    # build_engine picks CUDA + fp16 when there is a GPU, the CPU + fp32 otherwise.
    engine = build_engine("stable-audio-open", setup.work / "weights")
    duration = STABLE_AUDIO_MAX_SECONDS if setup.tiny else 47.0
    steps = 4 if setup.tiny else 100
    prompt = "upbeat electronic music with heavy drums"

    def params(variants: int, steps: int) -> GenerateParams:
        return GenerateParams(prompt=prompt, duration_s=duration, steps=steps, seed=0, variants=variants)

    engine.run(None, params(1, 2), setup.work / "generate-warmup", _no_progress)
    rows = []
    for variants in GENERATE_VARIANTS:
        out = setup.work / f"generate-v{variants}"
        call = functools.partial(engine.run, None, params(variants, steps), out, _no_progress)
        seconds, peak = _timed(setup.device, call)
        written = sorted(path.name for path in out.glob("variant_*.wav"))
        lengths = {round(sf.info(str(out / name)).duration, 3) for name in written}
        verdict = "ok" if len(written) == variants and lengths == {round(duration, 3)} else "FAILED"
        rows.append(setup.row("generate", f"stable-audio-open, {steps} steps, {variants} variant(s) of {duration:g} s",
                              _precision(engine.pipeline.transformer.dtype), "variant-second", seconds,
                              variants * duration, variants * duration, peak,
                              check=f"{verdict}: {len(written)} files of {sorted(lengths)} s"))  # fmt: skip
    del engine
    _free(setup.device)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# song


def _build_ace_step(folder: Path, device: torch.device) -> None:
    """An AceStepPipeline at the XL turbo's DiT config (module docstring), random weights, built in bf16 on `device`
    (4.7B parameters initialise in seconds there) and saved with `save_pretrained` like the hub snapshot."""
    from diffusers import (
        AceStepPipeline,
        AceStepTransformer1DModel,
        AutoencoderOobleck,
        FlowMatchEulerDiscreteScheduler,
    )
    from diffusers.pipelines.ace_step.modeling_ace_step import (
        AceStepAudioTokenDetokenizer,
        AceStepAudioTokenizer,
        AceStepConditionEncoder,
    )
    from transformers import Qwen3Config, Qwen3Model

    from tests.tiny_ace_step import _tokenizer

    torch.manual_seed(0)
    tokenizer = _tokenizer()  # a small trained stand-in: prompt encoding is a tiny share of the work
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            text_encoder = Qwen3Model(
                Qwen3Config(vocab_size=len(tokenizer), hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                            num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                            max_position_embeddings=32768)
            )  # fmt: skip
            vae = AutoencoderOobleck(
                encoder_hidden_size=128, downsampling_ratios=[2, 4, 4, 6, 10], channel_multiples=[1, 2, 4, 8, 16],
                decoder_channels=128, decoder_input_channels=64, audio_channels=2, sampling_rate=48000,
            )  # fmt: skip
            transformer = AceStepTransformer1DModel(
                hidden_size=2560, intermediate_size=9728, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=8, head_dim=128, encoder_hidden_size=2048, is_turbo=True, model_version="turbo",
            )  # fmt: skip
            pipeline = AceStepPipeline(
                vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer,
                condition_encoder=AceStepConditionEncoder(), audio_tokenizer=AceStepAudioTokenizer(),
                audio_token_detokenizer=AceStepAudioTokenDetokenizer(),
                scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1),
            )  # fmt: skip
    finally:
        torch.set_default_dtype(previous)
    pipeline.save_pretrained(folder)


def bench_song(setup: Setup) -> list[Row]:
    from inference.params import SongParams
    from inference.song import build_engine
    from tests.tiny_ace_step import build_ace_step

    folder = setup.work / "weights" / "ace-step-1.5"
    if setup.tiny:
        build_ace_step(folder)
    else:
        _build_ace_step(folder, setup.device)
    engine = build_engine("ace-step-1.5", setup.work / "weights")  # CUDA + bf16 with a GPU, else CPU + fp32
    seconds_per_song = 2.0 if setup.tiny else 60.0
    steps = SongParams.model_fields["steps"].default
    lyrics = "[verse]\nhello world we sing tonight\n[chorus]\nla la la"

    def params(variants: int, duration: float) -> SongParams:
        return SongParams(prompt="upbeat synth pop", lyrics=lyrics, duration_s=duration, steps=steps, seed=0,
                          variants=variants)  # fmt: skip

    engine.run(None, params(1, max(1.0, seconds_per_song / 4)), setup.work / "song-warmup", _no_progress)
    rows = []
    for variants in SONG_VARIANTS:
        out = setup.work / f"song-v{variants}"
        call = functools.partial(engine.run, None, params(variants, seconds_per_song), out, _no_progress)
        seconds, peak = _timed(setup.device, call)
        written = sorted(path.name for path in out.glob("variant_*.wav"))
        lengths = {round(sf.info(str(out / name)).duration, 3) for name in written}
        verdict = "ok" if len(written) == variants and lengths == {round(seconds_per_song, 3)} else "FAILED"
        minutes = variants * seconds_per_song / 60
        row = setup.row("song", f"ACE-Step 1.5 XL turbo arch, {steps} steps, {variants} variant(s) of "
                        f"{seconds_per_song:g} s", _precision(engine.pipeline.transformer.dtype), "generated minute",
                        seconds, minutes, variants * seconds_per_song, peak,
                        check=f"{verdict}: {len(written)} files of {sorted(lengths)} s")  # fmt: skip
        if row.usd_per_unit_a10g_estimate is not None:
            per_song = row.usd_per_unit_a10g_estimate * SONG_MINUTES_PER_SONG
            row.note = f"estimate: USD {per_song:.4f} per {SONG_MINUTES_PER_SONG:g}-minute song on an A10G"
        rows.append(row)
    del engine
    _free(setup.device)
    return rows


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


# One function per engine's rows; `--only` takes these names. A row that needs a module this machine lacks becomes a
# "cannot run" row that names the module and the wheel set carrying it.
BENCHES: dict[str, Callable[[Setup], list[Row]]] = {
    "separate": bench_separate,
    "separate_roformer": bench_separate_roformer,
    "transcribe": bench_transcribe,
    "faster-whisper": bench_faster_whisper,
    "generate": bench_generate,
    "song": bench_song,
}


# ---------------------------------------------------------------------------------------------------------------


def format_table(rows: list[Row]) -> str:
    def num(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    header = ["engine", "case", "device", "prec", "s/unit", "unit", "x realtime", "peak GPU MiB",
              "USD/unit A10G (est.)", "check / note"]  # fmt: skip
    body = [[r.engine, r.case, r.device, r.precision, num(r.seconds_per_unit, 3), r.unit, num(r.realtime_x, 1),
             num(r.peak_gpu_mib, 0), num(r.usd_per_unit_a10g_estimate, 5), "; ".join(filter(None, [r.check, r.note]))]
            for r in rows]  # fmt: skip
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = [" | ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
             for line in [header, *body]]  # fmt: skip
    lines.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join(lines)


def environment(device: torch.device) -> dict[str, Any]:
    versions = {}
    for name in ("torch", "demucs", "whisper", "diffusers", "transformers", "ctranslate2"):
        with contextlib.suppress(Exception):
            versions[name] = str(getattr(importlib.import_module(name), "__version__", "?"))
    return {"python": platform.python_version(), "device": _device_name(device), "versions": versions,
            "cuda": torch.version.cuda, "a10g_usd_per_second": A10G_USD_PER_SECOND}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu.run", description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny configs and inputs on the CPU (a smoke test)")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHES), help="engines to run (default: all)")
    parser.add_argument("--json", type=Path, default=Path("bench-gpu.json"), help="where to write the rows")
    parser.add_argument("--a10g-slowdown", type=float, default=DEFAULT_A10G_SLOWDOWN,
                        help="assumed A10G seconds per H200 second, for the USD estimate")  # fmt: skip
    parser.add_argument("--work", type=Path, help="folder for weights, inputs and outputs (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.tiny:
        device = torch.device("cpu")
        # One intra-op thread: on a shared CI box more threads than free cores make the tiny models 10x slower.
        torch.set_num_threads(1)
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        parser.error("no CUDA device here: run with --tiny for the CPU smoke test")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-gpu-", dir=args.work) as work:
        for name in args.only or list(BENCHES):
            print(f"running {name} ...", file=sys.stderr, flush=True)
            setup = Setup(tiny=args.tiny, device=device, work=Path(work) / name, a10g_slowdown=args.a10g_slowdown)
            setup.work.mkdir(parents=True)
            started = time.perf_counter()
            try:
                rows.extend(BENCHES[name](setup))
            except ImportError as exc:
                rows.append(Row(engine=name, case="(all)", device=_device_name(device),
                                note=f"cannot run: {missing_module(exc)}"))  # fmt: skip
            except Exception as exc:  # one broken engine must not hide the others' rows
                rows.append(Row(engine=name, case="(all)", device=_device_name(device),
                                note=f"error: {type(exc).__name__}: {str(exc)[:300]}"))  # fmt: skip
            print(f"  {name} took {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    print(format_table(rows))
    report = {"environment": environment(device), "tiny": args.tiny, "a10g_slowdown_assumed": args.a10g_slowdown,
              "rows": [asdict(row) for row in rows]}  # fmt: skip
    args.json.write_text(json.dumps(report, indent=2))
    failed = [row for row in rows if row.note.startswith("error") or row.check.startswith("FAILED")]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
