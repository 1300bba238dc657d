"""A tiny whisper checkpoint for tests and the CPU benchmark, in whisper's own format ({"dims", "model_state_dict"}).

A plainly random whisper is useless here: its decoder positional embedding is `torch.empty` (garbage, sometimes
NaN), and random logits make whisper fall back through all six temperatures and hit its own all-masked edge cases.
So the encoder (and every cross-attention query/key, which word timestamps read) stays random, while the text
decoder is "scripted" through its weights: the decoder blocks' output projections are zeroed, so the final hidden
state at position p is LayerNorm(token + position), dominated by a large positional vector u_p; the (tied) output
embedding of the token wanted at step p is aligned with u_p. The model therefore detects language SCRIPT_LANGUAGE
and decodes `<|0.00|> hello world <|1.00|> <|endoftext|>` for any audio: one well-formed segment, through whisper's
normal decoding, timestamp rules and word alignment. Building it takes well under a second.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from whisper.model import ModelDimensions, Whisper
from whisper.tokenizer import get_tokenizer

SCRIPT_LANGUAGE = "de"
SCRIPT_WORDS = (" hello", " world")
SCRIPT_END_SECONDS = 1.0

DIMS = ModelDimensions(
    n_mels=80,
    n_audio_ctx=1500,
    n_audio_state=64,
    n_audio_head=2,
    n_audio_layer=1,
    n_vocab=51865,
    n_text_ctx=32,
    n_text_state=64,
    n_text_head=2,
    n_text_layer=1,
)


def _scripted_model(seed: int) -> Whisper:
    tokenizer = get_tokenizer(True)  # text tokens are the same for every language count
    words = [tokenizer.encode(word) for word in SCRIPT_WORDS]
    assert all(len(w) == 1 for w in words)
    return scripted_whisper(DIMS, [w[0] for w in words], SCRIPT_END_SECONDS, seed)


def scripted_whisper(dims: ModelDimensions, text_tokens: Sequence[int], end_seconds: float, seed: int) -> Whisper:
    """A random whisper of `dims` whose decoder emits `<|0.00|> text_tokens <|end_seconds|> <|endoftext|>` after
    detecting SCRIPT_LANGUAGE, for any audio and whatever the encoder computes (see the module docstring).

    The script is keyed on positions, so it holds for a window decoded without a previous-text prompt; positions
    3 + len(text_tokens) + 2 must fit in half the text context (whisper's sample_len)."""
    torch.manual_seed(seed)
    model = Whisper(dims)
    tokenizer = get_tokenizer(True, num_languages=model.num_languages)
    end_timestamp = tokenizer.timestamp_begin + round(end_seconds / 0.02)
    # Output wanted at each position. Positions 0-2 hold <|startoftranscript|><|lang|><|task|>; position 0's
    # prediction is the language detection.
    targets = {0: tokenizer.to_language_token(SCRIPT_LANGUAGE), 2: tokenizer.timestamp_begin}
    targets.update({3 + i: token for i, token in enumerate(text_tokens)})
    targets.update({3 + len(text_tokens): end_timestamp, 4 + len(text_tokens): tokenizer.eot})
    if max(targets) >= dims.n_text_ctx // 2 + 3:
        raise ValueError(f"{len(text_tokens)} text tokens do not fit whisper's sample_len of {dims.n_text_ctx // 2}")
    state = dims.n_text_state
    # Orthonormal, zero-mean directions (LayerNorm removes the mean), one per position; a context longer than the
    # state (faster-whisper needs 448 positions) gets random directions past it, where nothing is scripted.
    basis = torch.randn(state, min(dims.n_text_ctx, state))
    basis -= basis.mean(dim=0, keepdim=True)
    directions = torch.cat([torch.linalg.qr(basis).Q.T, torch.randn(max(0, dims.n_text_ctx - state), state)])
    directions -= directions.mean(dim=1, keepdim=True)
    directions /= directions.norm(dim=1, keepdim=True)
    with torch.no_grad():
        decoder = model.decoder
        decoder.positional_embedding.copy_(100.0 * directions)
        decoder.token_embedding.weight.normal_(0.0, 0.01)
        for position, token in targets.items():
            decoder.token_embedding.weight[token] = 5.0 * directions[position]
        for block in decoder.blocks:
            for projection in (block.attn.out, block.cross_attn.out, block.mlp[2]):
                projection.weight.zero_()
                if projection.bias is not None:
                    projection.bias.zero_()
    return model


def build_tiny_whisper(weights_dir: Path, name: str = "tiny-scripted", seed: int = 0) -> tuple[str, str]:
    """Write `weights_dir/whisper/<name>/<name>.pt`; returns (model_key, sha256) for `build_engine`."""
    model_key = f"whisper/{name}"
    folder = weights_dir / model_key
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.pt"
    torch.save({"dims": asdict(DIMS), "model_state_dict": _scripted_model(seed).state_dict()}, path)
    return model_key, hashlib.sha256(path.read_bytes()).hexdigest()


def lock_pinning(tmp_dir: Path, model_key: str, sha256: str) -> Path:
    """A copy of the repo's models.lock with the tiny checkpoint pinned: what an operator adds for a custom model."""
    from inference.models import DEFAULT_LOCK_PATH

    name = model_key.removeprefix("whisper/")
    entry = f"""

[models."{model_key}"]
task = "transcribe"
source = "built by tests/tiny_whisper.py"
licence = "MIT"
commercial_use = true
enabled_by_default = false

[[models."{model_key}".files]]
path = "{name}.pt"
url = "http://127.0.0.1:9/{name}.pt"
sha256 = "{sha256}"
"""
    lock = tmp_dir / "models.lock"
    lock.write_text(DEFAULT_LOCK_PATH.read_text() + entry)
    return lock
