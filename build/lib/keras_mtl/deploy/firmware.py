"""The firmware in microcontroller/: build it, run it in QEMU, and check what it prints against
the host's int8 pipeline on the same recording.

The listener (microcontroller/firmware/listener.cc) prints one line per finding:

    asc: 3.000-4.000 s park 83%          clip task: its scene over the last windows, and the score
    sed: Speech onset 1.240 s            frame task: an event starts (after the median filter)
    sed: Speech offset 2.800 s           ... and ends (clipped to the end of the recording)

`expected_report` computes the same findings on the host: the firmware's C front end compiled for
the host with the firmware's FFT (CMSIS-DSP's), the exported int8 models in the TFLite-Micro
interpreter, run step by step (StreamingRunner), and the library's own SED post-processing
(metrics.postprocess).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from scipy.ndimage import median_filter

from keras_mtl.core.errors import ConfigError, DataError
from keras_mtl.core.paths import REPO_ROOT, default_cache_dir
from keras_mtl.data import download
from keras_mtl.data.audio import load_audio
from keras_mtl.deploy.export import load_run
from keras_mtl.deploy.streaming import StreamingRunner
from keras_mtl.deploy.tflite import Int8Model, int8_call
from keras_mtl.features.logmel import LogMel
from keras_mtl.tasks import metrics

log = logging.getLogger(__name__)

FIRMWARE_DIR = REPO_ROOT / "microcontroller"

# CMSIS-DSP's C sources, from the cmsisdsp source distribution on PyPI (the same pin as
# microcontroller/CMakeLists.txt); the front end takes its real FFT from there
CMSIS_DSP_VERSION = "1.10.3"
CMSIS_DSP_URL = (
    "https://files.pythonhosted.org/packages/2c/ec/0decbb48985d2eb98739a9bbf4ba090278cc492a7c1a5d5b907e8baf67b5/"
    f"cmsisdsp-{CMSIS_DSP_VERSION}.tar.gz"
)
CMSIS_DSP_SHA256 = "307d32298faa7c58db912851027fce35f886fec7eb1a27c4b309ce1a97f47519"
CMSIS_DSP_FFT_SOURCES = (  # arm_rfft_fast_f32 and what it calls (as in microcontroller/CMakeLists.txt)
    "Source/TransformFunctions/arm_rfft_fast_f32.c",
    "Source/TransformFunctions/arm_rfft_fast_init_f32.c",
    "Source/TransformFunctions/arm_cfft_f32.c",
    "Source/TransformFunctions/arm_cfft_init_f32.c",
    "Source/TransformFunctions/arm_cfft_radix8_f32.c",
    "Source/TransformFunctions/arm_bitreversal2.c",
    "Source/CommonTables/arm_common_tables.c",
    "Source/CommonTables/arm_const_structs.c",
)
TFLM_COMMIT = "7948b85e020470a30a83bf00e10fc43b486bfcba"  # as pinned in microcontroller/CMakeLists.txt

# a label may be any text, spaces included (the task is its safe name)
_SCENE = re.compile(r"^(\w+): (\d+)\.(\d{3})-(\d+)\.(\d{3}) s (.+) (-?\d+)%$")
_EVENT = re.compile(r"^(\w+): (.+) (onset|offset) (\d+)\.(\d{3}) s$")
_INSTRUCTIONS = re.compile(r"^instructions per second of audio: (\S+(?: \S+)*) (\d+)$")

#: cycles per instruction assumed for the load estimate: a Cortex-M4 issues most instructions in one
#: cycle, loads in two (one when pipelined with the next), taken branches in 2-4; int8 kernels are
#: load- and multiply-accumulate heavy. The emulator counts instructions, not cycles.
ASSUMED_CPI = 1.3
BOARD_CLOCK_HZ = 64_000_000  # the Nano 33 BLE Sense's nRF52840


@dataclasses.dataclass
class Findings:
    """Scenes {task: [(start_ms, end_ms, label, percent)]} and events {task: [(onset_ms, offset_ms, label)]}.

    The host's findings also say where one output step (1 LSB) could change them, for the
    comparison with the firmware, whose CMSIS-NN kernels may round an operator one step away from
    the reference kernels of the host interpreter: ``margins`` {task: [top-1 minus top-2 score, in
    output steps, per scene row]} and ``activity`` {task: (frame_ms, classes, active, uncertain)}
    with the frame-by-class activity after the median filter, and where the filtered score lies
    within one step of the threshold."""

    scenes: dict[str, list[tuple]] = dataclasses.field(default_factory=dict)
    events: dict[str, list[tuple]] = dataclasses.field(default_factory=dict)
    margins: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    activity: dict[str, tuple] = dataclasses.field(default_factory=dict)
    # the firmware's count under QEMU -icount: {"front end" | piece | "all": instructions per second of audio}
    instructions: dict[str, int] = dataclasses.field(default_factory=dict)

    def as_json(self) -> dict:
        return {"scenes": self.scenes, "events": self.events}


def load_estimate(instructions_per_second: float, cpi: float = ASSUMED_CPI, clock_hz: float = BOARD_CLOCK_HZ) -> float:
    """Fraction of a core's time that ``instructions_per_second`` of audio take: instructions x CPI / clock."""
    return instructions_per_second * cpi / clock_hz


def parse_listener_output(text: str) -> Findings:
    """Findings from the lines the firmware printed (other lines are ignored)."""
    found = Findings()
    open_events: dict[tuple[str, str], int] = {}
    for line in text.splitlines():
        line = line.strip()
        if match := _SCENE.match(line):
            task, s, sm, e, em, label, percent = match.groups()
            found.scenes.setdefault(task, []).append(
                (int(s) * 1000 + int(sm), int(e) * 1000 + int(em), label, int(percent))
            )
        elif match := _INSTRUCTIONS.match(line):
            found.instructions[match.group(1)] = int(match.group(2))
        elif match := _EVENT.match(line):
            task, label, kind, s, sm = match.groups()
            time_ms = int(s) * 1000 + int(sm)
            if kind == "onset":
                open_events[(task, label)] = time_ms
            else:
                onset = open_events.pop((task, label), None)
                if onset is None:
                    raise DataError(f"firmware output: offset of {task}/{label} at {time_ms} ms without an onset")
                found.events.setdefault(task, []).append((onset, time_ms, label))
    for task in found.events:
        found.events[task].sort()
    if open_events:
        raise DataError(f"firmware output: events never closed: {sorted(open_events)}")
    return found


def cmsis_dsp_source() -> Path:
    """The unpacked cmsisdsp sdist (CMSIS-DSP's Include/, PrivateInclude/ and Source/): the folder
    named by KERAS_MTL_CMSIS_DSP_SOURCE, else downloaded once (checksum verified) into the cache.

    Raises DataError when it cannot be downloaded, ConfigError when the named folder is not one.
    Processes that download at the same time each use their own temporary folder; one wins."""
    named = os.environ.get("KERAS_MTL_CMSIS_DSP_SOURCE")
    root = Path(named) if named else default_cache_dir().parent / f"cmsisdsp-{CMSIS_DSP_VERSION}"
    if (root / "Include" / "arm_math.h").is_file():
        return root
    if named:
        raise ConfigError(f"KERAS_MTL_CMSIS_DSP_SOURCE={named}: no Include/arm_math.h (an unpacked cmsisdsp sdist)")
    root.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        try:
            archive = download.fetch(CMSIS_DSP_URL, work / Path(CMSIS_DSP_URL).name, {"sha256": CMSIS_DSP_SHA256})
        except DataError as exc:
            raise DataError(
                f"{exc}; offline, set KERAS_MTL_CMSIS_DSP_SOURCE to an unpacked cmsisdsp-{CMSIS_DSP_VERSION} sdist"
            ) from None
        download.extract(archive, work / "unpacked")
        try:
            os.replace(work / "unpacked" / f"cmsisdsp-{CMSIS_DSP_VERSION}", root)
        except OSError:
            if not (root / "Include" / "arm_math.h").is_file():  # not another process's copy
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return root


def c_front_end_features(export_dir: str | Path, audio: np.ndarray, fft: str = "portable") -> np.ndarray | None:
    """The log-mel of ``audio`` by the firmware's C front end compiled for this machine (the export's
    model_settings.h), (frames * mel bands,) float32, or None without a host C compiler.

    ``fft``: "portable" (the radix-2 FFT of host builds) or "cmsis-dsp" (CMSIS-DSP's arm_rfft_fast_f32,
    as on the Cortex-M, compiled from the cmsisdsp sdist: see `cmsis_dsp_source`)."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        return None
    if fft not in ("portable", "cmsis-dsp"):
        raise ConfigError(f"fft: 'portable' or 'cmsis-dsp', not {fft!r}")
    source = FIRMWARE_DIR / "frontend"
    extra = []
    if fft == "cmsis-dsp":
        dsp = cmsis_dsp_source()
        fft_size = re.search(r"#define KM_FFT_SIZE (\d+)", (Path(export_dir) / "c" / "model_settings.h").read_text())
        extra = [
            "-D__GNUC_PYTHON__",  # CMSIS-DSP's portable C, without the Cortex-M core headers
            "-DKM_USE_CMSIS_DSP",
            f"-DKM_LOGMEL_FFT_SIZE={fft_size.group(1)}",
            f"-I{dsp / 'Include'}",
            f"-I{dsp / 'PrivateInclude'}",
            *(str(dsp / name) for name in CMSIS_DSP_FFT_SOURCES),
        ]
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        program = folder / "logmel"
        subprocess.run(
            [
                compiler,
                "-std=c99",
                "-O2",
                "-ffp-contract=off",
                f"-I{Path(export_dir) / 'c'}",
                str(source / "logmel.c"),
                str(source / "logmel_main.c"),
                *extra,
                "-lm",
                "-o",
                str(program),
            ],
            check=True,
            capture_output=True,
        )
        np.asarray(audio, np.float32).tofile(folder / "in.f32")
        subprocess.run([str(program), str(folder / "in.f32"), str(folder / "out.f32")], check=True, capture_output=True)
        features = np.fromfile(folder / "out.f32", np.float32)
    return features


def expected_report(export_dir: str | Path, wav: str | Path, front_end: str = "c", fft: str = "cmsis-dsp") -> Findings:
    """What the listener should print for ``wav``, computed with the exported int8 models in the
    TFLite-Micro interpreter on the host. ``front_end="c"`` takes the log-mel from the firmware's own
    C front end compiled for the host with ``fft`` (see `c_front_end_features`; "cmsis-dsp", the
    Cortex-M build's, is the default) and falls back to Python without a compiler, so that the
    comparison isolates the models and the streaming: the C and Python front ends differ by ~1e-4,
    enough to move a few int8 inputs by one step (the front ends are compared with each other in
    tests/test_export.py). Raises DataError when the CMSIS-DSP sources cannot be had offline,
    ConfigError when KERAS_MTL_CMSIS_DSP_SOURCE names a folder that holds none."""
    export_dir = Path(export_dir)
    report_path = export_dir / "export_report.json"
    if not report_path.is_file():
        raise ConfigError(f"{export_dir}: no export_report.json (run scripts/export.py first)")
    report = json.loads(report_path.read_text())
    config, tasks, _, plan = load_run(Path(report["run"]))
    models = {}
    for piece in plan.pieces:
        flatbuffer = (export_dir / f"{piece.name}.tflite").read_bytes()
        models[piece.name] = Int8Model(flatbuffer, "tflm", arena_size=report["models"][piece.name]["tflm_arena_bytes"])
    runner = StreamingRunner(plan, int8_call(models))
    audio = load_audio(wav, config.frontend.sample_rate)
    duration = len(audio) / config.frontend.sample_rate
    features = c_front_end_features(export_dir, audio, fft=fft) if front_end == "c" else None
    if features is None:
        features = LogMel(config.frontend)(audio)
    else:
        features = features.reshape(-1, config.frontend.n_mels)
    embeddings = runner.embeddings(features)
    window_ms = plan.hop_frames * config.frontend.hop_length * 1000 // config.frontend.sample_rate
    embedding_seconds = window_ms / 1000 / plan.output_frames
    by_name = {t.name: t for t in tasks}
    found = Findings()
    for piece in plan.pieces:
        task = by_name.get(piece.task)
        if piece.kind == "clip_head":
            frames = embeddings[piece.branch]
            per_window = plan.output_frames
            count = len(frames) // per_window
            rows = found.scenes.setdefault(task.name, [])
            for last in range(piece.windows - 1, count):
                chunk = frames[(last - piece.windows + 1) * per_window : (last + 1) * per_window]
                scores = runner.call(piece, {"frames": chunk[None]})[piece.model.output_names[0]][0]
                best = int(np.argmax(scores))
                percent = int(np.rint(np.float32(100.0) * np.float32(scores[best])))
                rows.append(
                    ((last + 1 - piece.windows) * window_ms, (last + 1) * window_ms, task.classes[best], percent)
                )
                step = models[piece.name].output_quantization(piece.model.output_names[0])[0]
                found.margins.setdefault(task.name, []).append(float((scores[best] - np.sort(scores)[-2]) / step))
        elif piece.kind == "frame_step":
            scores = runner.predict(piece, features, embeddings)
            active = metrics.postprocess(scores, task.median_filter_frames, task.threshold)
            events = metrics.frames_to_events(active, task.classes, embedding_seconds, duration)
            found.events[task.name] = sorted(
                (int(round(on * 1000)), int(round(off * 1000)), label) for on, off, label in events
            )
            step = models[piece.name].output_quantization("scores")[0]
            filtered = (
                median_filter(scores, size=(task.median_filter_frames, 1), mode="nearest")
                if task.median_filter_frames > 1
                else scores
            )
            uncertain = np.abs(filtered - task.threshold) <= step * 1.01
            frames = math.ceil(duration / embedding_seconds - 1e-9)  # output frames that start inside the audio
            found.activity[task.name] = (
                int(round(embedding_seconds * 1000)),
                list(task.classes),
                active[:frames],
                uncertain[:frames],
            )
    return found


def compare(expected: Findings, firmware: Findings, time_tolerance_ms: int = 0) -> list[str]:
    """Differences between the host's and the firmware's findings, as readable lines (empty when
    they agree). Where the host found ``margins`` / ``activity``, a difference that one output step
    explains is accepted: a scene label whose top two scores lie within one step, and event frames
    whose filtered score lies within one step of the threshold."""
    problems = []
    for task in sorted(set(expected.scenes) | set(firmware.scenes)):
        a, b = expected.scenes.get(task, []), firmware.scenes.get(task, [])
        margins = expected.margins.get(task, [math.inf] * len(a))
        if [r[:2] for r in a] != [r[:2] for r in b]:
            problems.append(f"{task}: scene windows differ: host {a} firmware {b}")
            continue
        for x, y, margin in zip(a, b, margins):
            if x[2] != y[2] and margin > 1.0 + 1e-6:
                problems.append(
                    f"{task}: {x[0]}-{x[1]} ms: host {x[2]} ({x[3]}%, {margin:.0f} steps ahead) firmware {y[2]}"
                )
            elif x[2] == y[2] and abs(x[3] - y[3]) > 1:
                problems.append(f"{task}: {x[0]}-{x[1]} ms: score {x[3]}% on the host, {y[3]}% on the firmware")
    for task in sorted(set(expected.events) | set(firmware.events)):
        a, b = expected.events.get(task, []), firmware.events.get(task, [])
        if task in expected.activity:
            frame_ms, classes, active, uncertain = expected.activity[task]
            device = _activity(b, classes, frame_ms, len(active))
            wrong = (device != active) & ~uncertain
            if wrong.any():
                frame, column = (int(v) for v in np.argwhere(wrong)[0])
                problems.append(
                    f"{task}: {int(wrong.sum())} frame(s) differ beyond one output step, first "
                    f"{classes[column]} at {frame * frame_ms} ms: host {a} firmware {b}"
                )
            continue
        same = len(a) == len(b) and all(
            x[2] == y[2] and abs(x[0] - y[0]) <= time_tolerance_ms and abs(x[1] - y[1]) <= time_tolerance_ms
            for x, y in zip(a, b)
        )
        if not same:
            problems.append(f"{task}: events differ: host {a} firmware {b}")
    return problems


def _activity(events, classes, frame_ms: int, frames: int) -> np.ndarray:
    """Frame-by-class activity of a list of (onset_ms, offset_ms, label) events."""
    active = np.zeros((frames, len(classes)), bool)
    for onset, offset, label in events:
        active[onset // frame_ms : -(-offset // frame_ms), classes.index(label)] = True
    return active


def build(
    export_dir: str | Path,
    wav: str | Path,
    build_dir: str | Path,
    tflm_source: str | Path | None = None,
    board: str = "mps2_an386",
    profile_operators: bool = False,
) -> Path:
    """Configure and build the firmware with CMake; returns the ELF. ``tflm_source``: a local
    tflite-micro-arduino-examples tree (otherwise CMake fetches the pinned commit);
    ``profile_operators``: the firmware also prints each operator's instructions (KM_PROFILE_OPERATORS)."""
    for tool in ("cmake", "arm-none-eabi-gcc", "arm-none-eabi-g++"):
        if shutil.which(tool) is None:
            raise ConfigError(
                f"{tool} not found: apt install cmake gcc-arm-none-eabi libnewlib-arm-none-eabi "
                "libstdc++-arm-none-eabi-newlib"
            )
    build_dir = Path(build_dir)
    command = [
        "cmake",
        "-S",
        str(FIRMWARE_DIR),
        "-B",
        str(build_dir),
        f"-DKM_BOARD={board}",
        f"-DKM_EXPORT_DIR={Path(export_dir).resolve()}",
        f"-DKM_WAV={Path(wav).resolve()}",
        f"-DKM_PROFILE_OPERATORS={'ON' if profile_operators else 'OFF'}",
    ]
    if shutil.which("ninja"):
        command += ["-G", "Ninja"]
    if tflm_source:
        command.append(f"-DFETCHCONTENT_SOURCE_DIR_TFLM={Path(tflm_source).resolve()}")
    command.append(f"-DFETCHCONTENT_SOURCE_DIR_CMSISDSP={cmsis_dsp_source().resolve()}")
    for step in (command, ["cmake", "--build", str(build_dir), "--parallel"]):
        log.info("%s", " ".join(step))
        result = subprocess.run(step, capture_output=True, text=True)
        if result.returncode != 0:
            raise ConfigError(
                f"firmware build failed ({' '.join(step[:2])}):\n{(result.stdout + result.stderr)[-4000:]}"
            )
    return build_dir / "listener.elf"


def run_qemu(elf: str | Path, timeout: float = 600) -> str:
    """Runs the mps2-an386 firmware in QEMU (semihosting exit) and returns what it printed."""
    if shutil.which("qemu-system-arm") is None:
        raise ConfigError("qemu-system-arm not found: apt install qemu-system-arm")
    result = subprocess.run(
        # -icount shift=0: one instruction per ns of emulated time, so the firmware's SysTick counts instructions
        [
            "qemu-system-arm",
            "-M",
            "mps2-an386",
            "-icount",
            "shift=0",
            "-nographic",
            "-semihosting",
            "-kernel",
            str(elf),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = result.stdout.replace("\r\n", "\n")
    if result.returncode != 0:
        raise DataError(
            f"the firmware exited with status {result.returncode}:\n{output[-3000:]}{result.stderr[-1000:]}"
        )
    return output
