"""The documentation site and the package (issue 32): mkdocs builds strictly, every public module has
an API page in the navigation, README stays a front door, one version number, and a wheel that
installs and runs on its own."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import yaml

import keras_mtl
from tests.conftest import REPO

DOCS = REPO / "docs"


def public_modules() -> list[str]:
    return sorted(
        ".".join(p.relative_to(REPO).with_suffix("").parts)
        for p in (REPO / "keras_mtl").rglob("*.py")
        if not p.name.startswith("_")
    )


def test_mkdocs_builds_strictly(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    page = (tmp_path / "site" / "api" / "keras_mtl.deploy.predict" / "index.html").read_text()
    assert "Predictor" in page and "predict_file" in page  # the reference comes from the docstrings
    assert (tmp_path / "site" / "predict" / "index.html").is_file()


def test_every_public_module_has_an_api_page_in_the_navigation():
    config = yaml.load((REPO / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)
    listed = set(re.findall(r"api/(keras_mtl[\w.]+)\.md", yaml.dump(config["nav"])))
    for module in public_modules():
        assert (DOCS / "api" / f"{module}.md").read_text().strip().endswith(f"::: {module}"), module
        assert module in listed, f"{module}: not in mkdocs.yml's nav"
        assert f"({module}.md)" in (DOCS / "api" / "index.md").read_text(), module
    assert listed == set(public_modules())


def test_readme_is_a_front_door_and_links_every_page():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    for page in (
        "index",
        "data",
        "models",
        "training",
        "studies",
        "deployment",
        "firmware",
        "predict",
        "method",
        "design",
    ):
        assert f"(docs/{page}.md)" in readme and (DOCS / f"{page}.md").is_file(), page
    assert "(docs/api/index.md)" in readme


def test_one_version_number():
    result = subprocess.run(
        [str(Path(sys.executable).parent / "keras-mtl"), "--version"], capture_output=True, text=True, timeout=120
    )
    assert result.stdout.strip() == f"keras-mtl {keras_mtl.__version__}"
    assert 'dynamic = ["version"]' in (REPO / "pyproject.toml").read_text()
    assert f"## {keras_mtl.__version__} " in (REPO / "CHANGELOG.md").read_text()


def test_every_third_party_import_is_a_runtime_dependency():
    # pip install . must bring everything the package imports
    text = (REPO / "pyproject.toml").read_text()
    declared = {
        re.split(r"[<>=!~ \[]", line.strip().strip('",'))[0].lower().replace("_", "-")
        for line in text.split("dependencies = [")[1].split("]")[0].splitlines()
        if line.strip().startswith('"')
    }
    imported = set()
    for path in (REPO / "keras_mtl").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    distributions = packages_distributions()
    for name in sorted(imported - set(sys.stdlib_module_names) - {"keras_mtl"}):
        owners = {d.lower().replace("_", "-") for d in distributions.get(name, [name])}
        assert owners & declared, f"{name} ({owners}) is imported but not in pyproject's dependencies"


@pytest.mark.slow
def test_the_wheel_installs_and_runs_on_its_own(tmp_path):
    # the wheel from this checkout, in a fresh venv, run outside the source tree; its dependencies are
    # this environment's (a .pth file), so nothing is downloaded: their declaration is checked above
    source = tmp_path / "source"  # a copy: setuptools writes build/ and egg-info beside the sources
    shutil.copytree(REPO / "keras_mtl", source / "keras_mtl", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next(wheels.glob("keras_mtl-*.whl"))
    assert wheel.name.startswith(f"keras_mtl-{keras_mtl.__version__}-")
    names = zipfile.ZipFile(wheel).namelist()
    assert "keras_mtl/runs/presets/default.yaml" in names and not any(n.startswith("tests/") for n in names)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    site = next((venv / "lib").glob("python3*/site-packages"))
    here = [p for p in sys.path if p.endswith("site-packages")]
    (site / "deps-from-ci.pth").write_text("\n".join(here) + "\n")
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--no-deps", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert pip.returncode == 0, pip.stderr[-2000:]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(KERAS_MTL_DATA_DIR=str(tmp_path / "data"), KERAS_MTL_CACHE_DIR=str(tmp_path / "cache"))
    command = str(venv / "bin" / "keras-mtl")

    def run(*args):
        return subprocess.run([command, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)

    assert run("--version").stdout.strip() == f"keras-mtl {keras_mtl.__version__}"
    assert "predict" in run("--help").stdout
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import keras_mtl; print(keras_mtl.__file__)"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert where.stdout.strip().startswith(str(venv)), where.stdout  # the installed wheel, not the checkout
    trained = run(
        "train", "--task-set", "asc", "--preset", "tiny", "--epochs", "1", "--output-dir", str(tmp_path / "run")
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (tmp_path / "run" / "metrics.json").is_file()
