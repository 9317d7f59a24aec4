"""Print a model's per-layer parameters and MACs per second of audio, with int8 memory estimates.

python scripts/profile.py --task-set asc,sed                       # default preset
python scripts/profile.py --preset seed000 --task-set asc,sed      # seed 000's MT model
python scripts/profile.py --model cp_mobile                        # DCASE 2024 Task 1 baseline
"""

from __future__ import annotations

import argparse

from keras_mtl.cli import common as cli

PROG = "keras-mtl profile"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model",
        default="mtl",
        choices=("mtl", "cp_mobile"),
        help="mtl: the multi-task builder with --preset/--task-set; cp_mobile: the DCASE 2024 baseline",
    )
    p.add_argument("--preset", default="default", help=f"built-in configuration: {', '.join(cli.preset_names())}")
    p.add_argument(
        "--architecture",
        help="model family from the registry (default: the preset's); the network is built as training builds it",
    )
    p.add_argument("--task-set", default="asc,sed")
    p.add_argument("--shared-blocks", type=int, help="number of shared conv blocks (default: all)")
    p.add_argument("--seconds", type=float, default=1.0, help="audio length the MACs are counted for")
    args = p.parse_args(argv)
    cli.setup_logging(quiet=True)

    import dataclasses

    from keras_mtl.features.logmel import FrontEndConfig
    from keras_mtl.models import profiling
    from keras_mtl.runs import config as run_config

    if args.model == "cp_mobile":
        from keras_mtl.models.cp_mobile import build_cp_mobile

        model = build_cp_mobile(10)
        frontend = FrontEndConfig(sample_rate=32000, window_length=3072, hop_length=500, fft_length=4096, n_mels=256)
        task_names = ["asc"]
    else:
        from keras_mtl.core.errors import ConfigError
        from keras_mtl.runs.network import build_network
        from keras_mtl.tasks.registry import parse_task_set

        tasks = parse_task_set(args.task_set)
        preset = run_config.for_task_set(run_config.load_preset(args.preset), [t.name for t in tasks])
        if args.architecture:
            preset = {**preset, "architecture": args.architecture.strip()}
        config = run_config.build({**preset, "tasks": [t.name for t in tasks]})
        if args.shared_blocks is not None:
            if config.architecture != "mtl":
                raise ConfigError(f"--shared-blocks is an option of the mtl builder, not of {config.architecture}")
            config = dataclasses.replace(
                config, model=dataclasses.replace(config.model, shared_blocks=args.shared_blocks)
            )
        model = build_network(config, tasks)  # the one builder training uses (train.py --dry-run)
        frontend = config.frontend
        task_names = [t.name for t in tasks]
    layers = profiling.profile(model, frontend, seconds=args.seconds)
    summary = profiling.summarize(layers, task_names)
    print(profiling.format_table(layers))
    total = summary["total"]
    print(f"\nKeras parameter count (incl. non-trainable): {model.count_params():,}")
    print(
        f"int8 weights: {total['int8_weight_bytes']:,} bytes; peak activations (int8, batch 1, "
        f"{args.seconds:g} s): {total['int8_activation_bytes']:,} bytes"
    )
    for name, part in summary["task_paths"].items():
        print(f"{name} path: {part['params']:,} params, {part['macs_per_second']:,} MACs")
    return 0
