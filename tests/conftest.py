"""Shared fixtures: a tiny synthetic corpus generated once per test session."""

from __future__ import annotations

import dataclasses
import os

import pytest

from keras_mtl.data.synth.synthetic import SyntheticConfig, generate

TINY = SyntheticConfig(
    seed=3,
    asc_train_per_scene=2,
    asc_test_per_scene=1,
    sed_train=6,
    sed_weak=2,
    sed_unlabeled=2,
    sed_validation=3,
)


@pytest.fixture(scope="session")
def tiny_config() -> SyntheticConfig:
    return TINY


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """Root folder holding tau22/ and desed/ written by the synthetic generator."""
    root = tmp_path_factory.mktemp("synthetic") / "tiny"
    generate(root, TINY, workers=1)
    return root


@pytest.fixture()
def isolated_dirs(tmp_path, monkeypatch):
    """Point data, cache and run folders of keras_mtl at a temporary place."""
    monkeypatch.setenv("KERAS_MTL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("KERAS_MTL_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def small_config(**changes) -> SyntheticConfig:
    return dataclasses.replace(TINY, **changes)


os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
