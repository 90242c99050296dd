"""Synthetic Mandarin digit strings from espeak-ng, drawn deterministically from a seed.

Each clip is described by a :class:`ClipSpec` (text and every synthesis and processing choice), and
:func:`synthesize` turns a spec into 16 kHz int16 PCM. A spec is drawn from its own RNG, seeded by
``(seed, split, index)``, so a clip never depends on how many others were drawn or on how many processes drew
them, and a held-out split is independent of the training split by construction.

The range every split covers (the model trained on it knows nothing outside it):

* text: 1 to 12 digits 零一二三四五六七八九, uniformly;
* voice: ``cmn-latn-pinyin`` with one of espeak-ng's voice variants (all of them, or none);
* speed 120-230 words per minute, pitch 0-99, a word gap of 0-150 ms;
* gain -20 to +6 dB on the synthesiser's own level (clipped to int16);
* noise: half the clips get white noise at an SNR of 5-40 dB over the whole clip;
* leading and trailing silence of 0-1 s each; without noise, half the clips keep that silence exact zeros,
  the rest get a faint noise floor (-90 to -60 dBFS).

Why pinyin: espeak-ng 1.51's ``cmn`` voice misreads 8 of the 10 digit characters (it reads 一 as "yi one"), so
the text goes to the ``cmn-latn-pinyin`` voice as tone-numbered pinyin, ``ling2 yi1 er4``.

No torch here: the demo's ``--say`` uses this module in the API-side process.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from engine.units import SAMPLE_RATE

VOICE = "cmn-latn-pinyin"
DIGITS = "零一二三四五六七八九"
PINYIN: dict[str, str] = dict(zip(DIGITS, "ling2 yi1 er4 san1 si4 wu3 liu4 qi1 ba1 jiu3".split()))

# The ranges above, as numbers (one owner: the docstring and docs/demo-model.md quote these).
MIN_DIGITS, MAX_DIGITS = 1, 12
SPEED_WPM = (120, 230)
PITCH = (0, 99)
GAP_10MS = (0, 15)
GAIN_DB = (-20.0, 6.0)
SNR_DB = (5.0, 40.0)
SILENCE_S = (0.0, 1.0)
FLOOR_DBFS = (-90.0, -60.0)

SPLITS = {"train": 0, "dev": 1, "eval": 2, "demo": 3}


class SynthError(RuntimeError):
    """espeak-ng is missing or failed."""


@dataclass(frozen=True)
class ClipSpec:
    text: str  # the digits as characters: the reference transcript
    variant: str  # an espeak-ng voice variant, "" for the voice's own
    speed: int  # words per minute
    pitch: int
    gap: int  # extra pause between words, in 10 ms units
    gain_db: float
    snr_db: float | None  # white noise over the whole clip, None for none
    lead_s: float
    trail_s: float
    zero_silence: bool  # leading/trailing silence as exact zeros (only without noise)
    noise_seed: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClipSpec:
        return cls(**data)


def write_specs(path: Path, specs: list[ClipSpec]) -> None:
    """One spec a line, as JSON (a model's ``eval.jsonl``)."""
    path.write_text("".join(json.dumps(s.to_json(), ensure_ascii=False) + "\n" for s in specs), encoding="utf-8")


def read_specs(path: Path) -> list[ClipSpec]:
    return [ClipSpec.from_json(json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines()]


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


@lru_cache(maxsize=1)
def voice_variants() -> tuple[str, ...]:
    """Every voice variant this espeak-ng knows, sorted (``espeak-ng --voices=variant``)."""
    out = _run_espeak(["--voices=variant"]).decode()
    names = [line.split()[4].removeprefix("!v/") for line in out.splitlines()[1:] if len(line.split()) >= 5]
    return tuple(sorted(set(names)))


def clip_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS[split], index])


def draw_spec(seed: int, split: str, index: int, text: str | None = None) -> ClipSpec:
    """The ``index``-th clip of ``split`` under ``seed``; ``text`` overrides the drawn digits."""
    rng = clip_rng(seed, split, index)
    variants = ("",) + voice_variants()
    n_digits = int(rng.integers(MIN_DIGITS, MAX_DIGITS + 1))
    digits = "".join(DIGITS[i] for i in rng.integers(0, 10, n_digits))
    noisy = bool(rng.random() < 0.5)
    zero = bool(rng.random() < 0.5)
    return ClipSpec(
        text=text if text is not None else digits,
        variant=variants[int(rng.integers(len(variants)))],
        speed=int(rng.integers(SPEED_WPM[0], SPEED_WPM[1] + 1)),
        pitch=int(rng.integers(PITCH[0], PITCH[1] + 1)),
        gap=int(rng.integers(GAP_10MS[0], GAP_10MS[1] + 1)),
        gain_db=round(float(rng.uniform(*GAIN_DB)), 2),
        snr_db=round(float(rng.uniform(*SNR_DB)), 2) if noisy else None,
        lead_s=round(float(rng.uniform(*SILENCE_S)), 3),
        trail_s=round(float(rng.uniform(*SILENCE_S)), 3),
        zero_silence=zero and not noisy,
        noise_seed=int(rng.integers(2**31)),
    )


def to_pinyin(text: str) -> str:
    """Tone-numbered pinyin for the digits of ``text`` (other characters are not spoken)."""
    return " ".join(PINYIN[ch] for ch in text if ch in PINYIN)


def synthesize(spec: ClipSpec) -> np.ndarray:
    """16 kHz mono int16 PCM for ``spec``: espeak-ng, resampled, with the spec's silence, gain and noise."""
    voice = VOICE + (f"+{spec.variant}" if spec.variant else "")
    wav = _run_espeak(
        ["-v", voice, "-s", str(spec.speed), "-p", str(spec.pitch), "-g", str(spec.gap), "--stdout", to_pinyin(spec.text)]
    )
    speech = _resample(_read_wav(wav))
    speech *= 10.0 ** (spec.gain_db / 20.0)
    rng = np.random.default_rng(spec.noise_seed)
    lead = np.zeros(int(spec.lead_s * SAMPLE_RATE), np.float64)
    trail = np.zeros(int(spec.trail_s * SAMPLE_RATE), np.float64)
    clip = np.concatenate([lead, speech, trail])
    if spec.snr_db is not None:
        power = float(np.mean(speech**2)) or 1.0
        clip += rng.normal(0.0, np.sqrt(power / 10.0 ** (spec.snr_db / 10.0)), clip.shape)
    elif not spec.zero_silence:
        floor = 32768.0 * 10.0 ** (rng.uniform(*FLOOR_DBFS) / 20.0)
        clip += rng.normal(0.0, floor, clip.shape)
    return np.clip(np.round(clip), -32768, 32767).astype(np.int16)


def synthesize_text(text: str, seed: int = 0) -> tuple[ClipSpec, np.ndarray]:
    """A clip of ``text`` in the demo's plain voice (no variant, mid speed and pitch, no noise)."""
    spec = ClipSpec(text, "", 160, 50, 2, 0.0, None, 0.3, 0.5, True, seed)
    return spec, synthesize(spec)


def _run_espeak(args: list[str]) -> bytes:
    if not espeak_available():
        raise SynthError("espeak-ng is not installed (Debian: apt-get install espeak-ng)")
    result = subprocess.run(["espeak-ng", *args], capture_output=True, check=False)
    if result.returncode != 0:
        raise SynthError(f"espeak-ng {' '.join(args)} failed: {result.stderr.decode(errors='replace')}")
    return result.stdout


def _read_wav(data: bytes) -> np.ndarray:
    import soundfile  # type: ignore[import-untyped]

    # --stdout writes a streaming header (sizes 0x7fffffff); soundfile reads up to the real end.
    samples, rate = soundfile.read(io.BytesIO(data), dtype="float64")
    if rate != 22050:
        raise SynthError(f"espeak-ng produced {rate} Hz, expected 22050")
    scaled: np.ndarray = samples * 32768.0
    return scaled


def _resample(samples: np.ndarray) -> np.ndarray:
    import soxr

    return np.asarray(soxr.resample(samples, 22050, SAMPLE_RATE, quality="HQ"), dtype=np.float64)
