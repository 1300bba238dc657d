"""What measuring an input's length costs: header fields vs demuxed packet durations vs decoded samples.

    python -m bench.probe [--minutes 20] [--runs 3] [--silence-hours 24] [--json results.json]

For each accepted format, a `--minutes` stereo 44.1 kHz input is timed three ways (median of `--runs`):
`header` (what the container claims: free, and a lie away from wrong), `demux` (the sum of packet durations, what
`inference.audio.probe` does) and `decode` (counting decoded samples). Then a header-less FLAC of `--silence-hours`
of silence (kilobytes that decode to hours): the old probe decoded all of it; the new one stops at the 20-min limit.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile as sf

from inference.audio import DecodeLimits, probe
from inference.base import EngineError

RATE = 44100
LIMIT_S = 20 * 60.0


def _blocks(minutes: float) -> Iterator[np.ndarray]:
    """(2, n) float32 blocks of a tone with noise, 10 s at a time."""
    rng = np.random.default_rng(0)
    total = int(minutes * 60 * RATE)
    for start in range(0, total, RATE * 10):
        t = (start + np.arange(min(RATE * 10, total - start))) / RATE
        mono = (0.2 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
        yield np.stack([mono, mono])


def _write_pyav(path: Path, fmt: str, codec: str, minutes: float) -> Path:
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=RATE, layout="stereo")
        stream.bit_rate = 192_000
        frame_size = stream.codec_context.frame_size or 1024
        pts = 0
        for block in _blocks(minutes):
            for start in range(0, block.shape[1], frame_size):
                chunk = np.ascontiguousarray(block[:, start : start + frame_size])
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
                frame.sample_rate, frame.pts, frame.time_base = RATE, pts, Fraction(1, RATE)
                pts += chunk.shape[1]
                for packet in stream.encode(frame):
                    out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def make_inputs(minutes: float, folder: Path) -> dict[str, Path]:
    paths: dict[str, Path] = {}
    for kind, (fmt, subtype) in {
        "wav": ("WAV", "PCM_16"),
        "flac": ("FLAC", "PCM_16"),
        "ogg": ("OGG", "VORBIS"),
    }.items():
        paths[kind] = folder / f"long.{kind}"
        with sf.SoundFile(str(paths[kind]), "w", RATE, 2, format=fmt, subtype=subtype) as out:
            for block in _blocks(minutes):
                out.write(block.T)
    paths["mp3"] = _write_pyav(folder / "long.mp3", "mp3", "libmp3lame", minutes)
    paths["m4a"] = _write_pyav(folder / "long.m4a", "ipod", "aac", minutes)
    return paths


def silent_flac(hours: float, folder: Path) -> Path:
    """Header-less (total samples 0) mono FLAC of digital silence."""
    path = folder / "silence.flac"
    block = np.zeros((RATE * 600, 1), np.float32)
    with sf.SoundFile(str(path), "w", RATE, 1, format="FLAC", subtype="PCM_16") as out:
        for _ in range(int(hours * 6)):
            out.write(block)
    data = bytearray(path.read_bytes())
    packed = int.from_bytes(data[18:26], "big")
    data[18:26] = (packed & ~((1 << 36) - 1)).to_bytes(8, "big")
    path.write_bytes(bytes(data))
    return path


def header_seconds(path: Path) -> float | None:
    with av.open(str(path), metadata_errors="ignore") as container:
        stream = container.streams.audio[0]
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
        return container.duration / av.time_base if container.duration is not None else None


def old_probe_seconds(path: Path) -> float:
    """The probe before this change: the header, else decode the whole file."""
    claimed = header_seconds(path)
    return claimed if claimed is not None else decoded_seconds(path)


def demuxed_seconds(path: Path) -> float:
    return probe(path, DecodeLimits()).duration_s


def decoded_seconds(path: Path) -> float:
    with av.open(str(path), metadata_errors="ignore") as container:
        stream = container.streams.audio[0]
        return sum(frame.samples for frame in container.decode(stream)) / stream.codec_context.sample_rate


def limited_probe(path: Path) -> str:
    try:
        return f"{probe(path, DecodeLimits(max_seconds=LIMIT_S)).duration_s:.1f} s"
    except EngineError as exc:
        return exc.code


def _time(call: Callable[[Path], object], path: Path, runs: int) -> tuple[float, object]:
    call(path)  # warm-up: the first open pays FFmpeg's one-time setup and a cold page cache
    times, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = call(path)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--silence-hours", type=float, default=24.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="bench-probe-") as tmp:
        folder = Path(tmp)
        for kind, path in make_inputs(args.minutes, folder).items():
            for method, call in (("header", header_seconds), ("demux", demuxed_seconds), ("decode", decoded_seconds)):
                seconds, value = _time(call, path, args.runs)
                rows.append(
                    {"input": f"{kind} {args.minutes:g} min", "method": method, "ms": seconds * 1000, "got": value}
                )
        silence = silent_flac(args.silence_hours, folder)
        name = f"header-less flac, {args.silence_hours:g} h silence ({silence.stat().st_size / 1e6:.1f} MB)"
        for method, call in (("old probe", old_probe_seconds), ("probe, 20-min limit", limited_probe)):
            seconds, value = _time(call, silence, args.runs)
            rows.append({"input": name, "method": method, "ms": seconds * 1000, "got": value})
    for row in rows:
        got = row["got"]
        shown = f"{got:.2f} s" if isinstance(got, float) else str(got)
        print(f"{row['input']:52s} {row['method']:20s} {row['ms']:10.1f} ms   {shown}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=str))


if __name__ == "__main__":
    main()
