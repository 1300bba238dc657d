"""Tiny, randomly initialised diffusers text-to-audio pipelines for tests and the CPU benchmark.

Each builder writes a pipeline folder with `save_pretrained`, the same layout as a hub snapshot of
stabilityai/stable-audio-open-1.0 or cvssp/audioldm2, so the engine loads it through its real code path.
Tokenizers are trained here on a few sentences (no hub access). Component sizes follow diffusers' own fast tests,
with sample rates and latent lengths chosen so that a second of audio costs milliseconds.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import sentencepiece as spm
import torch
from diffusers import (
    AudioLDM2Pipeline,
    AudioLDM2ProjectionModel,
    AudioLDM2UNet2DConditionModel,
    AutoencoderKL,
    AutoencoderOobleck,
    CosineDPMSolverMultistepScheduler,
    DDIMScheduler,
    StableAudioDiTModel,
    StableAudioPipeline,
    StableAudioProjectionModel,
)
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    ClapAudioConfig,
    ClapConfig,
    ClapFeatureExtractor,
    ClapModel,
    ClapTextConfig,
    GPT2Config,
    GPT2Model,
    RobertaTokenizer,
    SpeechT5HifiGan,
    SpeechT5HifiGanConfig,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

CORPUS = [
    "a hammer hitting a wooden surface",
    "rain falling on a tin roof at night",
    "a dog barking in the distance",
    "upbeat electronic music with heavy drums",
    "a calm piano melody in a large hall",
    "birds singing in a forest at dawn",
    "footsteps on gravel and wind",
    "a car engine starting and driving away",
] * 4

# Stable Audio tiny geometry: hop 8 samples per latent frame, 64 frames, 1 kHz -> at most 0.512 s of audio.
STABLE_AUDIO_RATE = 1000
STABLE_AUDIO_MAX_SECONDS = 64 * 8 / STABLE_AUDIO_RATE
# AudioLDM2 tiny geometry: the vocoder upsamples each mel frame by 4, at 1.6 kHz -> 2.5 ms per frame.
AUDIOLDM2_RATE = 1600


def _t5_tokenizer(max_length: int) -> T5Tokenizer:
    """A SentencePiece unigram model trained on CORPUS, with T5's special-token layout (pad 0, eos 1, unk 2)."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=model, vocab_size=64, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2,
    )  # fmt: skip
    processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=max_length)


def _roberta_tokenizer(max_length: int) -> RobertaTokenizer:
    """A byte-level BPE trained on CORPUS with RoBERTa's special tokens at their usual ids."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(CORPUS, trainer=trainer)
    merges = [tuple(pair) for pair in json.loads(bpe.to_str())["model"]["merges"]]
    return RobertaTokenizer(vocab=bpe.get_vocab(), merges=merges, model_max_length=max_length)


def build_stable_audio(folder: Path) -> Path:
    torch.manual_seed(0)
    transformer = StableAudioDiTModel(
        sample_size=64, in_channels=3, num_layers=2, attention_head_dim=4, num_key_value_attention_heads=2,
        out_channels=3, cross_attention_dim=4, time_proj_dim=8, global_states_input_dim=8, cross_attention_input_dim=4,
    )  # fmt: skip
    # The real checkpoint's scheduler class and settings (stable-audio-open-1.0 scheduler_config.json).
    scheduler = CosineDPMSolverMultistepScheduler(
        solver_order=2,
        prediction_type="v_prediction",
        sigma_data=1.0,
        sigma_schedule="exponential",
        sigma_min=0.3,
        sigma_max=500,
    )
    vae = AutoencoderOobleck(
        encoder_hidden_size=6, downsampling_ratios=[2, 4], decoder_channels=3, decoder_input_channels=3,
        audio_channels=2, channel_multiples=[2, 4], sampling_rate=STABLE_AUDIO_RATE,
    )  # fmt: skip
    text_encoder = T5EncoderModel(
        T5Config(
            vocab_size=64,
            d_model=16,
            d_ff=32,
            d_kv=8,
            num_heads=2,
            num_layers=2,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    )
    projection_model = StableAudioProjectionModel(text_encoder_dim=16, conditioning_dim=4, min_value=0, max_value=32)
    pipeline = StableAudioPipeline(
        vae=vae,
        text_encoder=text_encoder,
        projection_model=projection_model,
        tokenizer=_t5_tokenizer(16),
        transformer=transformer,
        scheduler=scheduler,
    )
    pipeline.save_pretrained(folder)
    return folder


def build_audioldm2(folder: Path) -> Path:
    torch.manual_seed(0)
    unet = AudioLDM2UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=([None, 16, 32], [None, 16, 32]), norm_num_groups=4, attention_head_dim=4,
    )  # fmt: skip
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False
    )
    vae = AutoencoderKL(
        block_out_channels=[8, 16], in_channels=1, out_channels=1, norm_num_groups=4, latent_channels=4,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"], up_block_types=["UpDecoderBlock2D"] * 2,
    )  # fmt: skip
    text_config = ClapTextConfig(
        bos_token_id=0, eos_token_id=2, hidden_size=16, intermediate_size=37, layer_norm_eps=1e-05,
        num_attention_heads=2, num_hidden_layers=2, pad_token_id=1, vocab_size=300, projection_dim=16,
    )  # fmt: skip
    audio_config = ClapAudioConfig(
        spec_size=64, window_size=4, num_mel_bins=64, intermediate_size=37, layer_norm_eps=1e-05, depths=[2, 2],
        num_attention_heads=[2, 2], num_hidden_layers=2, hidden_size=192, projection_dim=16, patch_size=2,
        patch_stride=2, patch_embed_input_channels=4,
    )  # fmt: skip
    text_encoder = ClapModel(
        ClapConfig(text_config=text_config.to_dict(), audio_config=audio_config.to_dict(), projection_dim=16)
    )
    feature_extractor = ClapFeatureExtractor(
        feature_size=64, sampling_rate=AUDIOLDM2_RATE, hop_length=256, max_length_s=10
    )
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=64,
            d_model=32,
            d_ff=37,
            d_kv=8,
            num_heads=2,
            num_layers=2,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    )
    # GPT2Model, as in the cvssp/audioldm2 snapshot's model_index.json (the engine must cope with it).
    language_model = GPT2Model(
        GPT2Config(n_embd=16, n_head=2, n_layer=2, vocab_size=300, n_positions=99, bos_token_id=0, eos_token_id=2)
    )
    language_model.config.max_new_tokens = 8
    projection_model = AudioLDM2ProjectionModel(text_encoder_dim=16, text_encoder_1_dim=32, langauge_model_dim=16)
    vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(
        model_in_dim=16, sampling_rate=AUDIOLDM2_RATE, upsample_initial_channel=16, upsample_rates=[2, 2],
        upsample_kernel_sizes=[4, 4], resblock_kernel_sizes=[3, 7], resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]],
        normalize_before=False,
    ))  # fmt: skip
    pipeline = AudioLDM2Pipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, projection_model=projection_model,
        language_model=language_model, tokenizer=_roberta_tokenizer(32), tokenizer_2=_t5_tokenizer(32),
        feature_extractor=feature_extractor, unet=unet, scheduler=scheduler, vocoder=vocoder,
    )  # fmt: skip
    pipeline.save_pretrained(folder)
    return folder
