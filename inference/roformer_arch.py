"""BS-RoFormer and Mel-Band RoFormer networks whose parameter names match the published checkpoints.

Why our own module: the published checkpoints (viperx's BS-RoFormer, Kimberley Jensen's Mel-Band RoFormer,
ZFTurbo's 4-stem BS-RoFormer) are state_dicts of the Music-Source-Separation-Training (MSST, MIT) model classes,
models/bs_roformer/{bs_roformer,mel_band_roformer}.py, themselves forks of lucidrains' BS-RoFormer (MIT). The
`bs-roformer` wheel on PyPI (1.2.4) has moved on (hyper-connections, PoPE) and names its parameters differently, so
it cannot load them strictly; MSST itself is not a package. This is MSST's inference path re-typed: the same
modules in the same order under the same attribute names (so `load_state_dict(strict=True)` accepts the released
files), minus the training-only parts (losses, gradient checkpointing, the PoPE variant no released model uses).
Rotary embeddings come from `rotary-embedding-torch` (MIT) as in MSST: its `freqs` parameter is in the checkpoints.
The mel filter bank is librosa's, recomputed here (see mel_filter_bank).

Shapes: forward takes (batch, channels, samples) and returns (batch, stems, channels, samples) for both classes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import pack, rearrange, repeat, unpack
from rotary_embedding_torch import RotaryEmbedding
from torch import Tensor, nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1) * self.scale * self.gamma


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: float = 4, dropout: float = 0.0) -> None:
        super().__init__()
        inner = int(dim * mult)
        self.net = nn.Sequential(
            RMSNorm(dim),
            nn.Linear(dim, inner),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(inner, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Attention(nn.Module):
    """Gated multi-head attention with rotary positions (MSST's `Attention`)."""

    def __init__(
        self, dim: int, heads: int, dim_head: int, dropout: float, rotary_embed: RotaryEmbedding | None
    ) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.rotary_embed = rotary_embed
        inner = heads * dim_head
        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_gates = nn.Linear(dim, heads)
        self.to_out = nn.Sequential(nn.Linear(inner, dim, bias=False), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(x)
        q, k, v = rearrange(self.to_qkv(x), "b n (qkv h d) -> qkv b h n d", qkv=3, h=self.heads)
        if self.rotary_embed is not None:
            q = self.rotary_embed.rotate_queries_or_keys(q)
            k = self.rotary_embed.rotate_queries_or_keys(k)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        out = out * rearrange(self.to_gates(x), "b n h -> b h n 1").sigmoid()
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class LinearAttention(nn.Module):
    """Cross-covariance linear attention (El-Nouby et al. 2021), MSST's `LinearAttention`."""

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float, scale: float = 8) -> None:
        super().__init__()
        self.scale = scale
        self.dropout = dropout
        inner = dim_head * heads
        self.norm = RMSNorm(dim)
        # Sequential indices are part of the published names (to_qkv.0, to_out.1): keep the Rearrange layers.
        self.to_qkv = nn.Sequential(
            nn.Linear(dim, inner * 3, bias=False), _Rearrange("b n (qkv h d) -> qkv b h d n", qkv=3, h=heads)
        )
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.to_out = nn.Sequential(_Rearrange("b h d n -> b n (h d)"), nn.Linear(inner, dim, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.to_qkv(self.norm(x))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        q = q * self.temperature.exp()
        # MSST's Attend with an explicit scale rescales q so that SDPA's default scale becomes `scale`.
        q = q * (self.scale / q.shape[-1] ** -0.5)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.to_out(out)


class _Rearrange(nn.Module):
    def __init__(self, pattern: str, **sizes: int) -> None:
        super().__init__()
        self.pattern = pattern
        self.sizes = sizes

    def forward(self, x: Tensor) -> Tensor:
        return rearrange(x, self.pattern, **self.sizes)


class Transformer(nn.Module):
    def __init__(
        self,
        *,
        dim: int,
        depth: int,
        dim_head: int,
        heads: int,
        attn_dropout: float,
        ff_dropout: float,
        norm_output: bool,
        rotary_embed: RotaryEmbedding | None = None,
        linear_attn: bool = False,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        for _ in range(depth):
            attention: nn.Module = (
                LinearAttention(dim, heads, dim_head, attn_dropout)
                if linear_attn
                else Attention(dim, heads, dim_head, attn_dropout, rotary_embed)
            )
            self.layers.append(nn.ModuleList([attention, FeedForward(dim, dropout=ff_dropout)]))
        self.norm: nn.Module = RMSNorm(dim) if norm_output else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        for attention, feed_forward in self.layers:  # type: ignore[misc]
            x = attention(x) + x
            x = feed_forward(x) + x
        return self.norm(x)


class BandSplit(nn.Module):
    def __init__(self, dim: int, dim_inputs: tuple[int, ...]) -> None:
        super().__init__()
        self.dim_inputs = dim_inputs
        self.to_features = nn.ModuleList(nn.Sequential(RMSNorm(d), nn.Linear(d, dim)) for d in dim_inputs)

    def forward(self, x: Tensor) -> Tensor:
        bands = x.split(self.dim_inputs, dim=-1)
        return torch.stack([net(band) for band, net in zip(bands, self.to_features, strict=True)], dim=-2)


def _mlp(dim_in: int, dim_out: int, dim_hidden: int, hidden_layers: int) -> nn.Sequential:
    dims = (dim_in, *((dim_hidden,) * hidden_layers), dim_out)
    layers: list[nn.Module] = []
    for index, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if index < len(dims) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class MaskEstimator(nn.Module):
    def __init__(self, dim: int, dim_inputs: tuple[int, ...], hidden_layers: int, mlp_expansion_factor: int) -> None:
        super().__init__()
        hidden = dim * mlp_expansion_factor
        self.to_freqs = nn.ModuleList(
            nn.Sequential(_mlp(dim, d * 2, hidden, hidden_layers), nn.GLU(dim=-1)) for d in dim_inputs
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([mlp(band) for band, mlp in zip(x.unbind(dim=-2), self.to_freqs, strict=True)], dim=-1)


class _RoformerBase(nn.Module):
    """The parts both variants share: STFT settings, the axial transformer stack, the mask estimators."""

    band_split: BandSplit

    def __init__(
        self,
        *,
        dim: int,
        depth: int,
        stereo: bool,
        num_stems: int,
        time_transformer_depth: int,
        freq_transformer_depth: int,
        linear_transformer_depth: int,
        dim_head: int,
        heads: int,
        attn_dropout: float,
        ff_dropout: float,
        stft_n_fft: int,
        stft_hop_length: int,
        stft_win_length: int,
        stft_normalized: bool,
        zero_dc: bool,
        norm_output: bool,
        skip_connection: bool,
    ) -> None:
        super().__init__()
        self.audio_channels = 2 if stereo else 1
        self.num_stems = num_stems
        self.skip_connection = skip_connection
        self.zero_dc = zero_dc
        self.stft_kwargs: dict[str, Any] = {
            "n_fft": stft_n_fft,
            "hop_length": stft_hop_length,
            "win_length": stft_win_length,
            "normalized": stft_normalized,
        }
        self.stft_win_length = stft_win_length
        common = {
            "dim": dim,
            "dim_head": dim_head,
            "heads": heads,
            "attn_dropout": attn_dropout,
            "ff_dropout": ff_dropout,
            "norm_output": norm_output,
        }
        # One rotary embedding shared by every time transformer, one by every frequency transformer (as MSST).
        time_rotary, freq_rotary = RotaryEmbedding(dim=dim_head), RotaryEmbedding(dim=dim_head)
        self.layers = nn.ModuleList()
        for _ in range(depth):
            block: list[nn.Module] = []
            if linear_transformer_depth > 0:
                block.append(Transformer(depth=linear_transformer_depth, linear_attn=True, **common))
            block.append(Transformer(depth=time_transformer_depth, rotary_embed=time_rotary, **common))
            block.append(Transformer(depth=freq_transformer_depth, rotary_embed=freq_rotary, **common))
            self.layers.append(nn.ModuleList(block))

    def _stft(self, audio: Tensor) -> Tensor:
        """(b, s, t) audio -> (b, f*s, frames, 2) real view, stereo interleaved into the frequency axis."""
        flat, shape = pack([audio], "* t")
        window = torch.hann_window(self.stft_win_length, device=audio.device)
        spec = torch.view_as_real(torch.stft(flat, **self.stft_kwargs, window=window, return_complex=True))
        (spec,) = unpack(spec, shape, "* f t c")
        return rearrange(spec, "b s f t c -> b (f s) t c")

    def _istft(self, spec: Tensor, length: int | None) -> Tensor:
        """(b, n, f*s, frames) complex -> (b, n, s, samples)."""
        batch, stems = spec.shape[:2]
        spec = rearrange(spec, "b n (f s) t -> (b n s) f t", s=self.audio_channels)
        if self.zero_dc:
            spec = spec.index_fill(1, torch.tensor(0, device=spec.device), 0.0)
        window = torch.hann_window(self.stft_win_length, device=spec.device)
        audio = torch.istft(spec, **self.stft_kwargs, window=window, return_complex=False, length=length)
        return rearrange(audio, "(b n s) t -> b n s t", b=batch, n=stems, s=self.audio_channels)

    def _axial(self, x: Tensor) -> Tensor:
        """The stack of (linear,) time and frequency transformers over (b, frames, bands, d)."""
        store: list[Tensor] = []
        for block in self.layers:
            *linear, time_transformer, freq_transformer = block  # type: ignore[misc]
            if linear:
                x, shape = pack([x], "b * d")
                (x,) = unpack(linear[0](x), shape, "b * d")
            if self.skip_connection:
                for previous in store:
                    x = x + previous
            x = rearrange(x, "b t f d -> b f t d")
            x, shape = pack([x], "* t d")
            (x,) = unpack(time_transformer(x), shape, "* t d")
            x = rearrange(x, "b f t d -> b t f d")
            x, shape = pack([x], "* f d")
            (x,) = unpack(freq_transformer(x), shape, "* f d")
            if self.skip_connection:
                store.append(x)
        return x


class BSRoformer(_RoformerBase):
    """Band-split RoFormer (Lu et al. 2023, arXiv 2309.02612): fixed frequency bands."""

    def __init__(
        self,
        dim: int,
        *,
        depth: int,
        freqs_per_bands: tuple[int, ...],
        stereo: bool = False,
        num_stems: int = 1,
        time_transformer_depth: int = 2,
        freq_transformer_depth: int = 2,
        linear_transformer_depth: int = 0,
        dim_head: int = 64,
        heads: int = 8,
        attn_dropout: float = 0.0,
        ff_dropout: float = 0.0,
        stft_n_fft: int = 2048,
        stft_hop_length: int = 512,
        stft_win_length: int = 2048,
        stft_normalized: bool = False,
        zero_dc: bool = True,
        mask_estimator_depth: int = 2,
        mlp_expansion_factor: int = 4,
        skip_connection: bool = False,
    ) -> None:
        super().__init__(
            dim=dim,
            depth=depth,
            stereo=stereo,
            num_stems=num_stems,
            time_transformer_depth=time_transformer_depth,
            freq_transformer_depth=freq_transformer_depth,
            linear_transformer_depth=linear_transformer_depth,
            dim_head=dim_head,
            heads=heads,
            attn_dropout=attn_dropout,
            ff_dropout=ff_dropout,
            stft_n_fft=stft_n_fft,
            stft_hop_length=stft_hop_length,
            stft_win_length=stft_win_length,
            stft_normalized=stft_normalized,
            zero_dc=zero_dc,
            norm_output=False,
            skip_connection=skip_connection,
        )
        self.final_norm = RMSNorm(dim)
        bins = stft_n_fft // 2 + 1
        if sum(freqs_per_bands) != bins:
            raise ValueError(f"freqs_per_bands must add up to {bins} STFT bins, not {sum(freqs_per_bands)}")
        with_complex = tuple(2 * f * self.audio_channels for f in freqs_per_bands)
        self.band_split = BandSplit(dim, with_complex)
        # BS-RoFormer's MLP has depth - 1 hidden layers (Mel-Band's has depth): the published names follow that.
        self.mask_estimators = nn.ModuleList(
            MaskEstimator(dim, with_complex, mask_estimator_depth - 1, mlp_expansion_factor) for _ in range(num_stems)
        )

    def forward(self, audio: Tensor) -> Tensor:
        spec = self._stft(audio)
        x = self.band_split(rearrange(spec, "b f t c -> b t (f c)"))
        x = self.final_norm(self._axial(x))
        mask = torch.stack([estimator(x) for estimator in self.mask_estimators], dim=1)
        mask = torch.view_as_complex(rearrange(mask, "b n t (f c) -> b n f t c", c=2).float().contiguous())
        return self._istft(torch.view_as_complex(spec.unsqueeze(1).contiguous()) * mask, audio.shape[-1])


class MelBandRoformer(_RoformerBase):
    """Mel-band RoFormer (Wang et al. 2023, arXiv 2310.01809): overlapping mel bands, masks averaged where they
    overlap."""

    def __init__(
        self,
        dim: int,
        *,
        depth: int,
        stereo: bool = False,
        num_stems: int = 1,
        time_transformer_depth: int = 2,
        freq_transformer_depth: int = 2,
        linear_transformer_depth: int = 0,
        num_bands: int = 60,
        dim_head: int = 64,
        heads: int = 8,
        attn_dropout: float = 0.1,
        ff_dropout: float = 0.1,
        sample_rate: int = 44100,
        stft_n_fft: int = 2048,
        stft_hop_length: int = 512,
        stft_win_length: int = 2048,
        stft_normalized: bool = False,
        zero_dc: bool = True,
        mask_estimator_depth: int = 1,
        mlp_expansion_factor: int = 4,
        skip_connection: bool = False,
        match_input_audio_length: bool = False,
    ) -> None:
        super().__init__(
            dim=dim,
            depth=depth,
            stereo=stereo,
            num_stems=num_stems,
            time_transformer_depth=time_transformer_depth,
            freq_transformer_depth=freq_transformer_depth,
            linear_transformer_depth=linear_transformer_depth,
            dim_head=dim_head,
            heads=heads,
            attn_dropout=attn_dropout,
            ff_dropout=ff_dropout,
            stft_n_fft=stft_n_fft,
            stft_hop_length=stft_hop_length,
            stft_win_length=stft_win_length,
            stft_normalized=stft_normalized,
            zero_dc=zero_dc,
            norm_output=True,
            skip_connection=skip_connection,
        )
        self.match_input_audio_length = match_input_audio_length
        bands = torch.from_numpy(mel_filter_bank(sample_rate, stft_n_fft, num_bands)) > 0
        bins = stft_n_fft // 2 + 1
        freq_indices = repeat(torch.arange(bins), "f -> b f", b=num_bands)[bands]
        if stereo:
            freq_indices = rearrange(repeat(freq_indices, "f -> f s", s=2) * 2 + torch.arange(2), "f s -> (f s)")
        self.register_buffer("freq_indices", freq_indices, persistent=False)
        self.register_buffer("num_bands_per_freq", bands.sum(0), persistent=False)
        with_complex = tuple(2 * int(f) * self.audio_channels for f in bands.sum(1).tolist())
        self.band_split = BandSplit(dim, with_complex)
        self.mask_estimators = nn.ModuleList(
            MaskEstimator(dim, with_complex, mask_estimator_depth, mlp_expansion_factor) for _ in range(num_stems)
        )

    def forward(self, audio: Tensor) -> Tensor:
        batch, channels, length = audio.shape
        spec = self._stft(audio)
        indices: Tensor = self.freq_indices  # type: ignore[assignment]
        x = spec[torch.arange(batch, device=audio.device)[..., None], indices]
        x = self.band_split(rearrange(x, "b f t c -> b t (f c)"))
        x = self._axial(x)
        masks = torch.stack([estimator(x) for estimator in self.mask_estimators], dim=1)
        masks = torch.view_as_complex(rearrange(masks, "b n t (f c) -> b n f t c", c=2).float().contiguous())
        complex_spec = torch.view_as_complex(spec.contiguous()).unsqueeze(1)
        stems = masks.shape[1]
        # Average the masks of overlapping bands per frequency (the mel bands overlap).
        scatter = repeat(indices, "f -> b n f t", b=batch, n=stems, t=complex_spec.shape[-1])
        summed = torch.zeros_like(complex_spec.expand(-1, stems, -1, -1)).scatter_add_(2, scatter, masks)
        per_freq: Tensor = self.num_bands_per_freq  # type: ignore[assignment]
        denominator = repeat(per_freq, "f -> (f r) 1", r=channels)
        return self._istft(
            complex_spec * (summed / denominator.clamp(min=1e-8)), length if self.match_input_audio_length else None
        )


def mel_filter_bank(sample_rate: int, n_fft: int, num_bands: int) -> np.ndarray:
    """librosa.filters.mel(sr, n_fft, n_mels) with its defaults (Slaney mel scale and area normalisation, float32),
    the same float operations in the same order, so the bands (its nonzero entries) are librosa's exactly
    (tests/test_engine_separate_roformer.py compares them) without librosa in the worker image. As MSST builds it,
    its first and last corners are then forced positive, so every frequency belongs to some band."""
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0

    def hz_to_mel(hz: float) -> float:
        return float(min_log_mel + np.log(hz / min_log_hz) / logstep) if hz >= min_log_hz else hz / f_sp

    mels = np.linspace(hz_to_mel(0.0), hz_to_mel(sample_rate / 2), num_bands + 2)
    mel_f = f_sp * mels
    log_part = mels >= min_log_mel
    mel_f[log_part] = min_log_hz * np.exp(logstep * (mels[log_part] - min_log_mel))
    fft_freqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sample_rate)
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fft_freqs)
    bank = np.zeros((num_bands, 1 + n_fft // 2), dtype=np.float32)
    for i in range(num_bands):
        bank[i] = np.maximum(0, np.minimum(-ramps[i] / fdiff[i], ramps[i + 2] / fdiff[i + 1]))
    bank *= (2.0 / (mel_f[2 : num_bands + 2] - mel_f[:num_bands]))[:, np.newaxis]
    bank[0][0] = 1.0
    bank[-1, -1] = 1.0
    if not (bank > 0).any(axis=0).all():
        raise ValueError("the mel bands must cover every frequency")
    return bank
