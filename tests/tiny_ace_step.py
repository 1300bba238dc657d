"""A tiny, randomly initialised diffusers `AceStepPipeline` (ACE-Step 1.5) for tests and the CPU benchmark.

Every component the real diffusers-format checkpoint has (model_index.json, vae, text_encoder, tokenizer,
transformer, condition_encoder, scheduler, audio_tokenizer, audio_token_detokenizer) is built here with small
configs and written with `save_pretrained`, so the song engine loads it through `AceStepPipeline.from_pretrained`,
the path real weights take. The text encoder is a 2-layer Qwen3 (the real one is Qwen3-Embedding-0.6B) and the
tokenizer a byte-level BPE trained here on a few lines, with Qwen's `<|endoftext|>` token (the pipeline's prompt
templates end with it). Geometry: 1.6 kHz stereo, 64 samples per latent frame = 25 latent frames per second (the
real model's frame rate, at 48 kHz), so a second of song costs little on a CPU.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch
from diffusers import AceStepPipeline, AceStepTransformer1DModel, AutoencoderOobleck, FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.ace_step.modeling_ace_step import (
    AceStepAudioTokenDetokenizer,
    AceStepAudioTokenizer,
    AceStepConditionEncoder,
)
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3Model

ACE_STEP_RATE = 1600
ACE_STEP_HOP = 64  # product of the VAE's downsampling ratios
_ACOUSTIC = 4  # latent channels (the real model: 64)
_HIDDEN = 16
_TEXT_HIDDEN = 16

CORPUS = [
    "# Instruction\nFill the audio semantic mask based on the given conditions:",
    "# Caption\nupbeat synth pop with female vocals",
    "# Metas\n- bpm: 120\n- timesignature: 4\n- keyscale: C major\n- duration: 30 seconds",
    "# Languages\nen\n\n# Lyric\n[verse]\nhello world we sing tonight\n[chorus]\nla la la",
    "Repaint the mask area based on the given conditions:",
    "Generate audio semantic tokens based on the given conditions:",
] * 4


def _tokenizer() -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(CORPUS, trainer=trainer)
    bpe.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>", model_max_length=4096
    )


def _small(**extra: object) -> dict[str, object]:
    return dict(
        hidden_size=_HIDDEN, intermediate_size=32, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
        sliding_window=8, **extra,
    )  # fmt: skip


def build_ace_step(folder: Path) -> Path:
    torch.manual_seed(0)
    tokenizer = _tokenizer()
    text_encoder = Qwen3Model(
        Qwen3Config(
            vocab_size=len(tokenizer), hidden_size=_TEXT_HIDDEN, intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=8192,
        )
    )  # fmt: skip
    vae = AutoencoderOobleck(
        encoder_hidden_size=2 * _ACOUSTIC, downsampling_ratios=[8, ACE_STEP_HOP // 8], decoder_channels=6,
        decoder_input_channels=_ACOUSTIC, audio_channels=2, channel_multiples=[1, 2], sampling_rate=ACE_STEP_RATE,
    )  # fmt: skip
    transformer = AceStepTransformer1DModel(
        **_small(num_hidden_layers=2), in_channels=3 * _ACOUSTIC, audio_acoustic_hidden_dim=_ACOUSTIC, patch_size=2,
        is_turbo=True, model_version="turbo",
    )  # fmt: skip
    condition_encoder = AceStepConditionEncoder(
        **_small(num_lyric_encoder_hidden_layers=2, num_timbre_encoder_hidden_layers=2),
        text_hidden_dim=_TEXT_HIDDEN, timbre_hidden_dim=_ACOUSTIC,
    )  # fmt: skip
    # The real silence latent is VAE-encoded silence; any fixed values stand in for it here.
    condition_encoder.silence_latent.normal_(0.0, 0.1)
    audio_tokenizer = AceStepAudioTokenizer(
        **_small(num_attention_pooler_hidden_layers=1), audio_acoustic_hidden_dim=_ACOUSTIC, pool_window_size=5,
        fsq_dim=_HIDDEN, fsq_input_levels=[8, 5, 5],
    )  # fmt: skip
    detokenizer = AceStepAudioTokenDetokenizer(
        **_small(num_attention_pooler_hidden_layers=1), audio_acoustic_hidden_dim=_ACOUSTIC, pool_window_size=5
    )
    # The real checkpoint's scheduler: the pipeline computes its own sigmas and passes them in.
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0)
    pipeline = AceStepPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer,
        condition_encoder=condition_encoder, scheduler=scheduler, audio_tokenizer=audio_tokenizer,
        audio_token_detokenizer=detokenizer,
    )  # fmt: skip
    pipeline.save_pretrained(folder)
    return folder


def lock_pinning_folder(lock_path: Path, folder: Path, base_url: str, model_key: str = "ace-step-1.5") -> Path:
    """A copy of the repo's models.lock whose `model_key` row pins every file of `folder` (sha256 and size, served
    from `base_url`): what an operator writes for weights of their own, so `studio models pull` installs the tiny
    pipeline the way it installs real weights, checking each file."""
    from inference.models import DEFAULT_LOCK_PATH

    kept, skipping = [], False
    for line in DEFAULT_LOCK_PATH.read_text().splitlines():
        if line.startswith("["):  # a table header: the repo's own row (and its files) for this key is dropped
            skipping = line.startswith((f'[models."{model_key}"]', f'[[models."{model_key}".files]]'))
        if not skipping:
            kept.append(line)
    entry = [
        f'\n[models."{model_key}"]', 'task = "song"', 'source = "built by tests/tiny_ace_step.py"', 'licence = "MIT"',
        "commercial_use = true", "enabled_by_default = true",
    ]  # fmt: skip
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        entry += [
            f'\n[[models."{model_key}".files]]', f'path = "{relative}"', f'url = "{base_url}/{relative}"',
            f'sha256 = "{digest}"', f"bytes = {path.stat().st_size}",
        ]  # fmt: skip
    lock_path.write_text("\n".join(kept + entry) + "\n")
    return lock_path


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def served_folder(folder: Path) -> Iterator[str]:
    """`folder`'s files over HTTP on a free local port (standing in for the hub); yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietFiles, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
