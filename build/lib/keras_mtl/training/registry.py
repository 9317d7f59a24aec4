"""Every training strategy by name: those chosen with ``--strategy`` and those an architecture
brings (its ``strategy``, e.g. the MTL-VAE's)."""

from __future__ import annotations

from keras_mtl.core.errors import ConfigError
from keras_mtl.models import architectures
from keras_mtl.training import strategies
from keras_mtl.training.vae import MTLVAE

STRATEGIES = {**strategies.STRATEGIES, "mtl-vae": MTLVAE}


def get_strategy(name: str) -> type[strategies.MultiTaskStrategy]:
    """The strategy class called ``name``; ConfigError for an unknown one."""
    if name not in STRATEGIES:
        choices = [n for n, cls in STRATEGIES.items() if not cls.architecture_only]
        raise ConfigError(f"unknown strategy {name!r} (known: {', '.join(choices)})")
    return STRATEGIES[name]


def strategy_of(config) -> tuple[str, type[strategies.MultiTaskStrategy]]:
    """(name, class) of the strategy a run trains with: its architecture's own, else ``--strategy``.
    ConfigError when the two conflict or the settings do not suit the strategy (before any data is read)."""
    own = architectures.get_architecture(config.architecture).strategy
    if own is not None and (config.strategy != "soft" or config.weighting != "fixed"):
        raise ConfigError(
            f"architecture {config.architecture} trains with its own strategy: "
            f"drop --strategy {config.strategy} / --weighting {config.weighting}"
        )
    name = own or config.strategy
    cls = get_strategy(name)
    if cls.architecture_only and own is None:
        raise ConfigError(f"strategy {name} comes with its architecture (--architecture {name})")
    cls.check(config, name)
    return name, cls
