"""Offline synthetic speech with espeak-ng (the ``espeakng-loader`` wheel ships the library and
voices), written in the Speech Commands, Common Voice and VAD layouts.

Speakers, words, sentences, labels, splits, noise and SNRs are deterministic from the seed;
espeak-ng's own waveform is not bit-exact between runs (it reads the clock), so two
generations differ by a few samples per utterance, never in any label.

Honest labels: the speakers are espeak-ng voice variants with pitch and rate jitter. Gender is
the variant's declared gender. Age groups are *synthetic voice profiles* (pitch, pitch range,
rate and a tremor), standing in for Common Voice's age buckets; they say nothing about how real
voices age.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from tqdm.auto import tqdm

from keras_mtl.core import fileio
from keras_mtl.core.errors import DataError
from keras_mtl.data.audio import write_wav
from keras_mtl.data.readers import tau22
from keras_mtl.data.readers.common_voice import AGE_GROUPS
from keras_mtl.data.readers.speech_commands import WORDS
from keras_mtl.data.synth import chains, sounds
from keras_mtl.data.synth.vad_mix import VadBuildConfig, build_vad_set

log = logging.getLogger(__name__)
FORMAT_VERSION = 4
AGE_BUCKET_NAMES = {
    "under_30": ("teens", "twenties"),
    "30_60": ("thirties", "fourties", "fifties"),
    "over_60": ("sixties", "seventies"),
}
# espeak parameter ranges per synthetic age profile: (pitch 0-100, pitch range 0-100, words/min, tremor depth)
AGE_PROFILES = {
    "under_30": ((12, 20), (70, 95), (185, 215), 0.0),
    "30_60": ((-3, 3), (40, 60), (148, 168), 0.0),
    "over_60": ((-20, -12), (8, 28), (108, 132), 0.2),
}
SENTENCE_WORDS = (
    "the",
    "a",
    "house",
    "is",
    "near",
    "river",
    "we",
    "will",
    "go",
    "today",
    "music",
    "plays",
    "slowly",
    "bright",
    "morning",
    "city",
    "train",
    "leaves",
    "early",
    "garden",
    "seven",
    "people",
    "read",
    "books",
    "under",
    "green",
    "trees",
    "water",
    "runs",
    "quiet",
    "street",
    "after",
    "rain",
    "children",
    "sing",
)


class Espeak:
    """Synchronous espeak-ng synthesis through ctypes; one instance per process."""

    _instance = None
    RATE, VOLUME, PITCH, RANGE = 1, 2, 3, 4

    def __init__(self):
        try:
            import espeakng_loader
        except ImportError:
            raise DataError(
                "synthetic speech needs the espeakng-loader package (pip install -r requirements.txt)"
            ) from None
        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self._lib.espeak_Initialize.restype = ctypes.c_int
        rate = self._lib.espeak_Initialize(2, 0, espeakng_loader.get_data_path().encode(), 0)  # 2 = synchronous
        if rate <= 0:
            raise DataError("espeak-ng failed to initialise")
        self.sample_rate = int(rate)
        self.data_path = Path(espeakng_loader.get_data_path())
        self._chunks: list[np.ndarray] = []
        callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

        def collect(wav, count, events):
            if count > 0 and wav:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
            return 0

        self._callback = callback_type(collect)  # keep a reference: espeak calls it later
        self._lib.espeak_SetSynthCallback(self._callback)

    @classmethod
    def get(cls) -> Espeak:
        if cls._instance is None:
            cls._instance = Espeak()
        return cls._instance

    def variants(self) -> dict[str, str]:
        """Voice variant name -> 'female' or 'male' (variants that declare no gender are left out)."""
        out = {}
        for path in sorted((self.data_path / "voices" / "!v").iterdir()):
            for line in path.read_text(errors="ignore").splitlines():
                parts = line.strip().lower().split()
                if len(parts) >= 2 and parts[0] == "gender" and parts[1] in ("female", "male"):
                    out[path.name] = parts[1]
                    break
        return out

    def say(self, text: str, variant: str, pitch: int, pitch_range: int, rate: int) -> np.ndarray:
        """float32 audio at ``self.sample_rate``."""
        if self._lib.espeak_SetVoiceByName(f"en-us+{variant}".encode()) != 0:
            raise DataError(f"espeak-ng has no voice variant {variant!r}")
        for param, value in ((self.RATE, rate), (self.PITCH, pitch), (self.RANGE, pitch_range), (self.VOLUME, 100)):
            self._lib.espeak_SetParameter(param, int(value), 0)
        self._chunks.clear()
        data = text.encode()
        self._lib.espeak_Synth(
            ctypes.c_char_p(data),
            ctypes.c_size_t(len(data) + 1),
            ctypes.c_uint(0),
            ctypes.c_int(1),
            ctypes.c_uint(0),
            ctypes.c_uint(0),
            None,
            None,
        )
        if not self._chunks:
            return np.zeros(0, np.float32)
        return np.concatenate(self._chunks).astype(np.float32) / 32768.0


@dataclasses.dataclass(frozen=True)
class SpeechSynthConfig:
    seed: int = 0
    difficulty: float = 1.0
    sample_rate: int = 16000
    speakers: int = 48
    takes_per_word: int = 1
    cv_utterances: int = 600
    vad_train: int = 240
    vad_test: int = 80
    vad_clip_seconds: float = 4.0
    # "distinct": Speech Commands close-talk at 16 kHz, Common Voice (and the VAD set made from it)
    # narrow-band at 8 kHz and quieter (keras_mtl.data.synth.chains); "alike": one level and rate
    corpora: str = "distinct"

    def __post_init__(self):
        chains.check_mode(self.corpora)

    def fingerprint(self) -> str:
        fields = dataclasses.asdict(self)
        if fields["corpora"] == "alike":  # the same audio as before the field existed: the same folder
            del fields["corpora"]
        blob = json.dumps({**fields, "format": FORMAT_VERSION}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:8]


@dataclasses.dataclass(frozen=True)
class Speaker:
    ident: str
    variant: str
    gender: str
    age_group: str
    pitch: int
    pitch_range: int
    rate: int
    tremor: float


def make_speakers(config: SpeechSynthConfig, variants: dict[str, str]) -> list[Speaker]:
    females = sorted(v for v, g in variants.items() if g == "female")
    males = sorted(v for v, g in variants.items() if g == "male")
    if not females or not males:
        raise DataError("espeak-ng voice data has no female or no male variants")
    speakers = []
    for index in range(config.speakers):
        rng = np.random.default_rng([config.seed, 11, index])
        gender = "female" if index % 2 == 0 else "male"
        variant = (females if gender == "female" else males)[
            int(rng.integers(len(females if gender == "female" else males)))
        ]
        age_group = AGE_GROUPS[(index // 2) % len(AGE_GROUPS)]
        (p_lo, p_hi), (r_lo, r_hi), (w_lo, w_hi), tremor = AGE_PROFILES[age_group]
        spread = config.difficulty  # wider jitter -> profiles overlap more
        base = (54 if gender == "female" else 44) + rng.normal(0, 4)  # overlapping pitch
        speakers.append(
            Speaker(
                ident=hashlib.sha1(f"{config.seed}-{index}".encode()).hexdigest()[:8],
                variant=variant,
                gender=gender,
                age_group=age_group,
                pitch=int(np.clip(base + rng.uniform(p_lo, p_hi) * spread + rng.normal(0, 3), 0, 100)),
                pitch_range=int(np.clip(rng.uniform(r_lo, r_hi) + rng.normal(0, 8 * spread), 0, 100)),
                rate=int(rng.uniform(w_lo, w_hi) + rng.normal(0, 10 * spread)),
                tremor=tremor,
            )
        )
    return speakers


def _render_speech(engine: Espeak, speaker: Speaker, text: str, rng, sample_rate: int) -> np.ndarray:
    audio = engine.say(
        text,
        speaker.variant,
        speaker.pitch + int(rng.integers(-3, 4)),
        speaker.pitch_range,
        speaker.rate + int(rng.integers(-8, 9)),
    )
    audio = soxr.resample(audio, engine.sample_rate, sample_rate).astype(np.float32)
    if speaker.tremor:
        t = np.arange(len(audio)) / sample_rate
        audio *= 1 + speaker.tremor * np.sin(2 * np.pi * rng.uniform(4, 7) * t)
    return audio


def _trim(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    hop = sample_rate // 100
    n = len(audio) // hop
    if n == 0:
        return audio
    energy = np.mean(audio[: n * hop].reshape(n, hop) ** 2, axis=1)
    active = np.flatnonzero(energy > energy.max() * 1e-3)
    return audio[active[0] * hop : (active[-1] + 1) * hop] if len(active) else audio


def _noise(rng, n: int, sample_rate: int) -> np.ndarray:
    scene = tau22.SCENES[int(rng.integers(len(tau22.SCENES)))]
    return sounds.scene_texture(rng, sounds.SCENE_SPECS[scene], n, sample_rate)


def _mix(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    speech_rms = np.sqrt(np.mean(speech**2)) + 1e-9
    mix = speech / speech_rms * 0.05 + noise / (np.sqrt(np.mean(noise**2)) + 1e-9) * 0.05 * 10 ** (-snr_db / 20)
    peak = float(np.max(np.abs(mix)))
    return (mix * (0.9 / peak) if peak > 0.9 else mix).astype(np.float32)


def _recorded(config: SpeechSynthConfig, corpus: str, audio: np.ndarray, seed: list[int]) -> tuple[np.ndarray, int]:
    """A clip as ``corpus`` holds it (its chain's gain, band and rate with ``corpora: distinct``)."""
    if config.corpora == "alike":
        return audio, config.sample_rate
    chain = chains.CHAINS[corpus]
    return chain.apply(audio, config.sample_rate, chains.chain_rng(seed)), chain.sample_rate


def _split_of(speaker: Speaker) -> str:
    bucket = int(speaker.ident, 16) % 10
    return "test" if bucket < 2 else "validation" if bucket < 3 else "train"


def ensure_speech_synthetic(base: str | Path, config: SpeechSynthConfig) -> Path:
    root = Path(base) / f"speech-seed{config.seed}-d{config.difficulty:g}-{config.fingerprint()}"
    if (root / "complete.json").is_file():
        return root
    log.info("synthesising speech into %s", root)
    generate_speech(root, config)
    return root


def generate_speech(root: str | Path, config: SpeechSynthConfig) -> Path:
    """Write speech_commands/, common_voice/ and vad/ under ``root``; deterministic from the seed."""
    root = Path(root)
    engine = Espeak.get()
    speakers = make_speakers(config, engine.variants())
    sr = config.sample_rate
    snr_low, snr_high = 20 - 12 * config.difficulty, 30 - 8 * config.difficulty

    sc = root / "speech_commands"
    lists = {"validation": [], "test": []}
    jobs = [(s, w, k) for s in speakers for w in WORDS for k in range(config.takes_per_word)]
    for index, (speaker, word, take) in enumerate(tqdm(jobs, desc="speech commands", unit="clip", disable=None)):
        rel = f"{word}/{speaker.ident}_nohash_{take}.wav"
        split = _split_of(speaker)
        if split in lists:
            lists[split].append(rel)
        if (sc / rel).is_file():
            continue
        rng = np.random.default_rng([config.seed, 21, index])
        spoken = _trim(_render_speech(engine, speaker, word, rng, sr), sr)[:sr]
        clip = np.zeros(sr, np.float32)
        start = int(rng.integers(0, sr - len(spoken) + 1))
        clip[start : start + len(spoken)] = spoken
        audio, rate = _recorded(
            config,
            "speech_commands",
            _mix(clip, _noise(rng, sr, sr), rng.uniform(snr_low, snr_high)),
            [config.seed, 21, index],
        )
        write_wav(sc / rel, audio, rate)
    noise_dir = sc / "_background_noise_"
    for k in range(4):
        if not (noise_dir / f"synthetic_noise_{k}.wav").is_file():
            rng = np.random.default_rng([config.seed, 22, k])
            write_wav(noise_dir / f"synthetic_noise_{k}.wav", 0.1 * _noise(rng, 20 * sr, sr), sr)
    for split, name in (("validation", "validation_list.txt"), ("test", "testing_list.txt")):
        fileio.write_text(sc / name, "\n".join(sorted(lists[split])) + "\n")

    cv = root / "common_voice"
    rows = {"train": [], "validation": [], "test": []}
    fmt, ext = ("MP3", "mp3") if "MP3" in sf.available_formats() else ("WAV", "wav")
    for index in tqdm(range(config.cv_utterances), desc="common voice", unit="clip", disable=None):
        rng = np.random.default_rng([config.seed, 31, index])  # metadata stream
        speaker = speakers[int(rng.integers(len(speakers)))]
        sentence = " ".join(
            SENTENCE_WORDS[int(i)] for i in rng.integers(0, len(SENTENCE_WORDS), size=int(rng.integers(3, 7)))
        )
        gender, age = speaker.gender, str(rng.choice(AGE_BUCKET_NAMES[speaker.age_group]))
        if rng.random() < 0.05:  # like Common Voice: some rows lack a label
            gender = ""
        if rng.random() < 0.05:
            age = ""
        name = f"synthetic_en_{index:06d}.{ext}"
        path = cv / "clips" / name
        if not path.is_file():
            audio_rng = np.random.default_rng([config.seed, 31, index, 1])
            spoken = _trim(_render_speech(engine, speaker, sentence, audio_rng, sr), sr)[: 3 * sr]
            audio = _mix(spoken, _noise(audio_rng, len(spoken), sr), audio_rng.uniform(snr_low - 8, snr_high - 4))
            audio, rate = _recorded(config, "common_voice", audio, [config.seed, 31, index])
            with fileio.atomic_path(path) as tmp:
                sf.write(str(tmp), audio, rate, format=fmt)
        rows[_split_of(speaker)].append("\t".join([speaker.ident, name, sentence, "2", "0", age, gender, "", "en", ""]))
    header = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccents\tlocale\tsegment"
    for split, file in (("train", "train.tsv"), ("validation", "dev.tsv"), ("test", "test.tsv")):
        fileio.write_text(cv / file, "\n".join([header, *rows[split]]) + "\n")

    utterances = sorted((cv / "clips").glob(f"*.{ext}"))
    build_vad_set(
        root / "vad",
        utterances,
        sorted(noise_dir.glob("*.wav")),
        VadBuildConfig(
            clip_seconds=config.vad_clip_seconds,
            train_clips=config.vad_train,
            snr_db=(-12.0 - 4 * config.difficulty, 12.0 - 4 * config.difficulty),
            test_clips=config.vad_test,
            seed=config.seed,
            sample_rate=sr,
        ),
    )
    fileio.write_json(root / "complete.json", {"format": FORMAT_VERSION, **dataclasses.asdict(config)})
    return root
