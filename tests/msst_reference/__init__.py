"""Test-only reference code: the Music-Source-Separation-Training (MSST) project's own RoFormer models and demix,
copied verbatim from ZFTurbo/Music-Source-Separation-Training at commit ccc011abf7f89dd7922bb2888d48493b575c0289
(MIT licence, kept beside them in LICENSE): models/bs_roformer/{bs_roformer,mel_band_roformer,attend}.py and
utils/model_utils.py's demix (demix.py). The one edit in each model file is its `Attend` import path (marked).
Tests compare inference.roformer_arch and inference.separate_roformer against them."""
