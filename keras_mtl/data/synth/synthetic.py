"""Built-in synthetic data, written in the published TAU22 and DESED layouts.

Generation is deterministic from a seed: every clip has its own random stream derived from
(seed, split, index), so the result does not depend on worker count or order. Clips are
planned first (labels, events, scene parameters: cheap), then rendered; a rerun after an
interruption renders only the missing files, and the metadata is written last, atomically.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from keras_mtl.core import fileio
from keras_mtl.data.audio import write_wav
from keras_mtl.data.readers import desed, tau22
from keras_mtl.data.synth import chains, sounds

log = logging.getLogger(__name__)

FORMAT_VERSION = 3
CITIES = ("barcelona", "helsinki", "lisbon", "london", "lyon", "milan", "paris", "prague", "stockholm", "vienna")
TRAIN_DEVICES = ("a", "a", "a", "b", "c", "s1", "s2", "s3")
TEST_DEVICES = ("a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6")
SPLIT_IDS = {
    "asc_train": 1,
    "asc_test": 2,
    "synthetic_train": 3,
    "weak": 4,
    "unlabeled": 5,
    "validation": 6,
    "strong_real": 7,
}


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Size and difficulty of the built-in data set.

    ``difficulty`` scales every source of confusion together: spread of scene parameters,
    device colouring, mixing of each scene towards another one, and the event SNR range
    (0 = easy, 1 = default, 2 = hard). ``corpora``: "distinct" (default) records each corpus with
    its own level, band and sample rate (keras_mtl.data.synth.chains: TAU22 loud at 44.1 kHz, DESED's
    synthetic soundscapes clean, its weak/unlabelled/validation clips about 20 dB quieter and
    band-limited); "alike": one generator at one level for every corpus (the sets of keras-mtl 0.1).
    """

    seed: int = 0
    difficulty: float = 1.0
    sample_rate: int = 16000
    asc_clip_seconds: float = 1.0
    asc_train_per_scene: int = 100
    asc_test_per_scene: int = 30
    sed_clip_seconds: float = 10.0
    sed_train: int = 400
    sed_weak: int = 100
    sed_unlabeled: int = 100
    sed_validation: int = 120
    # strongly labelled clips in DCASE 2022's strong_real layout (the MTL-VAE's fourth data type); the
    # generator has no real recordings: these come from the same generator as synthetic_train
    sed_strong_real: int = 0
    corpora: str = "distinct"

    def __post_init__(self):
        chains.check_mode(self.corpora)

    def fingerprint(self) -> str:
        fields = dataclasses.asdict(self)
        if not fields["sed_strong_real"]:  # sets made before the field existed keep their folder
            del fields["sed_strong_real"]
        if fields["corpora"] == "alike":  # the same audio as before the field existed: the same folder
            del fields["corpora"]
        blob = json.dumps({**fields, "format": FORMAT_VERSION}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:8]


def dataset_dir(base: str | os.PathLike, config: SyntheticConfig) -> Path:
    return Path(base) / f"seed{config.seed}-d{config.difficulty:g}-{config.fingerprint()}"


def ensure_synthetic(base: str | os.PathLike, config: SyntheticConfig, workers: int | None = None) -> Path:
    """Return the folder of the synthetic set for ``config``, generating it first if needed."""
    root = dataset_dir(base, config)
    marker = root / "complete.json"
    if marker.is_file():
        return root
    log.info("generating synthetic data into %s", root)
    generate(root, config, workers=workers)
    return root


def generate(root: str | os.PathLike, config: SyntheticConfig, workers: int | None = None) -> Path:
    root = Path(root)
    plans = plan_all(config)
    jobs = [(root / rel, plan) for rel, plan in plans["audio"] if not (root / rel).is_file()]
    if jobs:
        _render_all(jobs, config.sample_rate, workers)
    _write_metadata(root, plans)
    fileio.write_json(root / "complete.json", {"format": FORMAT_VERSION, **dataclasses.asdict(config)})
    return root


# ------------------------------------------------------------------------------- planning
def _rng(config: SyntheticConfig, split: str, index: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng([config.seed, SPLIT_IDS[split], index, stream])


def _device_eq(config: SyntheticConfig, device: str) -> list[float]:
    rng = np.random.default_rng([config.seed, 99, sum(ord(c) * 31**i for i, c in enumerate(device))])
    return list(rng.normal(0, 2.0 * config.difficulty, size=len(sounds.BAND_CENTERS_HZ)))


def _location_spec(config: SyntheticConfig, scene: str, location: int) -> dict:
    """Scene parameters of one recording location (persistent across its clips)."""
    rng = np.random.default_rng([config.seed, 77, tau22.SCENES.index(scene), location])
    d = config.difficulty
    spec = json.loads(json.dumps(sounds.SCENE_SPECS[scene]))
    spec["gains"] = list(np.asarray(spec["gains"]) + rng.normal(0, 2.0 * d, size=len(spec["gains"])))
    spec["mod"] = [spec["mod"][0] * float(np.exp(rng.normal(0, 0.3 * d))), spec["mod"][1]]
    for key in ("babble", "clicks", "chirps"):
        spec[key] = spec[key] * float(np.exp(rng.normal(0, 0.4 * d)))
    return spec


def _clip_spec(config: SyntheticConfig, rng, base: dict, device: str | None) -> dict:
    """Per-clip variation: a pull towards another scene, small jitter and the device colour."""
    d = config.difficulty
    other = sounds.SCENE_SPECS[tau22.SCENES[int(rng.integers(len(tau22.SCENES)))]]
    w = float(rng.uniform(0, min(0.49, 0.35 * d)))
    gains = (1 - w) * np.asarray(base["gains"]) + w * np.asarray(other["gains"])
    gains = gains + rng.normal(0, 1.5 * d, size=len(gains))
    if device is not None:
        gains = gains + np.asarray(_device_eq(config, device))
    spec = {
        "gains": [float(g) for g in gains],
        "mod": [
            float((1 - w) * base["mod"][0] + w * other["mod"][0]),
            float((1 - w) * base["mod"][1] + w * other["mod"][1]),
        ],
        "hum": [list(h) for h in (base["hum"] if rng.random() > w else other["hum"])],
    }
    for key in ("babble", "clicks", "chirps"):
        spec[key] = float((1 - w) * base[key] + w * other[key])
    return spec


def _pick_event(rng, scene: str, typical_share: float) -> str:
    if rng.random() < typical_share:
        weights = sounds.SCENE_EVENTS[scene]
        labels, w = list(weights), np.asarray(list(weights.values()), dtype=float)
        return labels[int(rng.choice(len(labels), p=w / w.sum()))]
    return desed.CLASSES[int(rng.integers(len(desed.CLASSES)))]


def _plan_asc(config: SyntheticConfig, split: str, per_scene: int) -> list[dict]:
    devices = TRAIN_DEVICES if split == "asc_train" else TEST_DEVICES
    loc_offset = 0 if split == "asc_train" else 1000  # train and test never share a location
    plans = []
    index = 0
    for scene in tau22.SCENES:
        for k in range(per_scene):
            rng = _rng(config, split, index)
            location = loc_offset + k // 10
            city = CITIES[(location + tau22.SCENES.index(scene)) % len(CITIES)]
            device = devices[int(rng.integers(len(devices)))]
            spec = _clip_spec(config, rng, _location_spec(config, scene, location), device)
            events = []
            if rng.random() < 0.5:
                label = _pick_event(rng, scene, 0.8)
                dur = float(rng.uniform(0.2, config.asc_clip_seconds * 0.8))
                onset = float(rng.uniform(0, config.asc_clip_seconds - dur))
                events.append({"label": label, "onset": onset, "offset": onset + dur, "snr": float(rng.uniform(0, 12))})
            identifier = f"{city}-{location}"
            filename = f"audio/{scene}-{identifier}-{k % 10 * 10}-{device}.wav"
            plans.append(
                dict(
                    file=filename,
                    scene=scene,
                    identifier=identifier,
                    device=device,
                    spec=spec,
                    events=events,
                    seconds=config.asc_clip_seconds,
                    seed=[config.seed, SPLIT_IDS[split], index, 1],
                    chain="tau22" if config.corpora == "distinct" else None,
                )
            )
            index += 1
    return plans


def _plan_sed(config: SyntheticConfig, split: str, count: int) -> list[dict]:
    d = config.difficulty
    snr_low, snr_high = 12.0 - 7.0 * d, 22.0 - 4.0 * d
    length = config.sed_clip_seconds
    plans = []
    for index in range(count):
        rng = _rng(config, split, index)
        scene = tau22.SCENES[int(rng.integers(len(tau22.SCENES)))]
        spec = _clip_spec(config, rng, _location_spec(config, scene, 2000 + index), None)
        events = []
        for _ in range(int(rng.integers(1, 5))):
            label = _pick_event(rng, scene, 0.7)
            low, high = sounds.EVENT_SOURCES[label][1]
            dur = float(min(rng.uniform(low, high), length - 0.5))
            for _attempt in range(5):
                onset = float(rng.uniform(0, length - 0.3))
                offset = float(min(length, onset + dur))
                clash = any(
                    e["label"] == label and onset < e["offset"] + 0.3 and e["onset"] < offset + 0.3 for e in events
                )
                if not clash:
                    events.append(
                        {
                            "label": label,
                            "onset": round(onset, 3),
                            "offset": round(offset, 3),
                            "snr": float(rng.uniform(snr_low, snr_high)),
                        }
                    )
                    break
        events.sort(key=lambda e: e["onset"])
        plans.append(
            dict(
                file=f"{split}_{index:05d}.wav",
                scene=scene,
                spec=spec,
                events=events,
                seconds=length,
                seed=[config.seed, SPLIT_IDS[split], index, 1],
                chain=None
                if config.corpora == "alike"
                else "desed_synthetic"
                if split == "synthetic_train"
                else "desed_recorded",
            )
        )
    return plans


def plan_all(config: SyntheticConfig) -> dict:
    asc_train = _plan_asc(config, "asc_train", config.asc_train_per_scene)
    asc_test = _plan_asc(config, "asc_test", config.asc_test_per_scene)
    sed = {
        split: _plan_sed(config, split, count)
        for split, count in (
            ("synthetic_train", config.sed_train),
            ("weak", config.sed_weak),
            ("unlabeled", config.sed_unlabeled),
            ("validation", config.sed_validation),
            ("strong_real", config.sed_strong_real),
        )
        if count or split != "strong_real"
    }
    audio = [(Path("tau22") / p["file"], p) for p in asc_train + asc_test]
    for split, plans in sed.items():
        folder = Path("desed") / desed.LAYOUT[split][1]
        audio += [(folder / p["file"], p) for p in plans]
    return {"asc_train": asc_train, "asc_test": asc_test, "sed": sed, "audio": audio}


# ------------------------------------------------------------------------------- rendering
def render(plan: dict, sample_rate: int) -> np.ndarray:
    """The audio of one planned clip."""
    rng = np.random.default_rng(plan["seed"])
    n = int(round(plan["seconds"] * sample_rate))
    background = sounds.scene_texture(rng, plan["spec"], n, sample_rate)
    level = 10 ** (rng.uniform(-38, -28) / 20)  # background RMS in dBFS, alike for every corpus
    mix = level * background
    for event in plan["events"]:
        start = int(event["onset"] * sample_rate)
        sound = sounds.render_event(rng, event["label"], event["offset"] - event["onset"], sample_rate)
        sounds.place(mix, level * 10 ** (event["snr"] / 20) * sound, start)
    peak = float(np.max(np.abs(mix)))
    if peak > 0.99:
        mix *= 0.99 / peak
    return mix.astype(np.float32)


def _render_job(job):
    path, plan, sample_rate = job
    audio = render(plan, sample_rate)
    if plan.get("chain"):  # the corpus's level, band and sample rate
        chain = chains.CHAINS[plan["chain"]]
        audio, sample_rate = chain.apply(audio, sample_rate, chains.chain_rng(plan["seed"])), chain.sample_rate
    write_wav(path, audio, sample_rate)


def _render_all(jobs, sample_rate: int, workers: int | None) -> None:
    workers = workers or min(os.cpu_count() or 1, 4)
    tasks = [(path, plan, sample_rate) for path, plan in jobs]
    bar = tqdm(total=len(tasks), desc="synthesising audio", unit="clip", disable=None)
    if workers <= 1:
        for task in tasks:
            _render_job(task)
            bar.update()
    else:
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            for _ in pool.map(_render_job, tasks, chunksize=8):
                bar.update()
    bar.close()


# ------------------------------------------------------------------------------- metadata
def _write_metadata(root: Path, plans: dict) -> None:
    tau = root / "tau22"
    meta = ["filename\tscene_label\tidentifier\tsource_label"]
    meta += [
        f"{p['file']}\t{p['scene']}\t{p['identifier']}\t{p['device']}" for p in plans["asc_train"] + plans["asc_test"]
    ]
    fileio.write_text(tau / "meta.csv", "\n".join(meta) + "\n")
    setup = tau / "evaluation_setup"
    fileio.write_text(
        setup / "fold1_train.csv",
        _lines("filename\tscene_label", [f"{p['file']}\t{p['scene']}" for p in plans["asc_train"]]),
    )
    fileio.write_text(
        setup / "fold1_evaluate.csv",
        _lines("filename\tscene_label", [f"{p['file']}\t{p['scene']}" for p in plans["asc_test"]]),
    )
    fileio.write_text(setup / "fold1_test.csv", _lines("filename", [p["file"] for p in plans["asc_test"]]))

    d = root / "desed"
    for split in ("synthetic_train", "validation", "strong_real"):
        if split not in plans["sed"]:
            continue
        rows = [
            f"{p['file']}\t{e['onset']:.3f}\t{e['offset']:.3f}\t{e['label']}"
            for p in plans["sed"][split]
            for e in p["events"]
        ]
        fileio.write_text(d / desed.LAYOUT[split][2], _lines("filename\tonset\toffset\tevent_label", rows))
    durations = [f"{p['file']}\t{p['seconds']:.3f}" for p in plans["sed"]["validation"]]
    fileio.write_text(d / desed.LAYOUT["validation"][3], _lines("filename\tduration", durations))
    weak = [f"{p['file']}\t{','.join(sorted({e['label'] for e in p['events']}))}" for p in plans["sed"]["weak"]]
    fileio.write_text(d / desed.LAYOUT["weak"][2], _lines("filename\tevent_labels", weak))


def _lines(header: str, rows: list[str]) -> str:
    return "\n".join([header, *rows]) + "\n"
