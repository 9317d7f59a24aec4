"""Build the listener firmware for an export folder, run it in QEMU on a recording, and check
what it prints against the host's int8 pipeline on the same recording.

    python scripts/firmware.py runs/<run>/export --wav clip.wav
    python scripts/firmware.py runs/<run>/export --wav clip.wav --tflm-source ~/src/tflite-micro-arduino-examples

Needs cmake, gcc-arm-none-eabi (+ libnewlib-arm-none-eabi, libstdc++-arm-none-eabi-newlib) and
qemu-system-arm. TFLite-Micro is fetched by CMake at the pinned commit unless --tflm-source names a
local checkout of it. Writes <export>/firmware/ (build tree, listener output, firmware_check.json).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from keras_mtl.cli import common as cli

log = logging.getLogger(__name__)
PROG = "keras-mtl firmware"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("export_dir", help="folder written by scripts/export.py")
    p.add_argument("--wav", required=True, help="16 kHz mono 16-bit wav compiled into the QEMU firmware")
    p.add_argument("--tflm-source", help="local tflite-micro-arduino-examples checkout (offline builds)")
    p.add_argument("--build-dir", help="CMake build folder (default EXPORT_DIR/firmware/build)")
    p.add_argument("--build-only", action="store_true", help="build the ELF, do not run it")
    p.add_argument(
        "--profile-operators",
        action="store_true",
        help="also count the instructions of every operator of every model (printed per second of audio)",
    )
    cli.add_logging_options(p)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cli.setup_logging(args.verbose, args.quiet)
    from keras_mtl.core import fileio
    from keras_mtl.core.errors import ConfigError
    from keras_mtl.deploy import firmware

    export_dir = Path(args.export_dir)
    if not (export_dir / "c" / "km_pieces.h").is_file():
        raise ConfigError(f"{export_dir}: no c/km_pieces.h (run scripts/export.py RUN_DIR first)")
    if not Path(args.wav).is_file():
        raise ConfigError(f"{args.wav}: no such file")
    out = export_dir / "firmware"
    log.info("building the firmware (the first build compiles TFLite-Micro: a few minutes)")
    elf = firmware.build(
        export_dir,
        args.wav,
        Path(args.build_dir) if args.build_dir else out / "build",
        args.tflm_source,
        profile_operators=args.profile_operators,
    )
    print(f"firmware: {elf}")
    if args.build_only:
        return 0
    log.info("running it in QEMU (mps2-an386)")
    output = firmware.run_qemu(elf)
    fileio.write_text(out / "listener_output.txt", output)
    print(output, end="")
    device = firmware.parse_listener_output(output)
    host = firmware.expected_report(export_dir, args.wav)
    problems = firmware.compare(host, device)
    load = {}
    if "all" in device.instructions:
        total = device.instructions["all"]
        load = {
            "instructions_per_second": device.instructions,
            "assumed_cpi": firmware.ASSUMED_CPI,
            "clock_hz": firmware.BOARD_CLOCK_HZ,
            "load": firmware.load_estimate(total),
            "load_at_cpi_1": firmware.load_estimate(total, cpi=1.0),
        }
        print(
            f"estimated load on a {firmware.BOARD_CLOCK_HZ / 1e6:.0f} MHz Cortex-M4F: {100 * load['load']:.0f}% "
            f"({total / 1e6:.1f}M instructions per second of audio x CPI {firmware.ASSUMED_CPI} assumed; "
            f"{100 * load['load_at_cpi_1']:.0f}% at CPI 1)"
        )
    fileio.write_json(
        out / "firmware_check.json",
        {
            "wav": str(args.wav),
            "agrees": not problems,
            "problems": problems,
            "firmware": device.as_json(),
            "host": host.as_json(),
            **({"compute": load} if load else {}),
        },
    )
    if problems:
        for line in problems:
            print(f"differs from the host: {line}")
        return 1
    print(
        "the firmware's scenes and events equal the host int8 pipeline's "
        "(up to one output step where CMSIS-NN and the reference kernels round differently)"
    )
    return 0
