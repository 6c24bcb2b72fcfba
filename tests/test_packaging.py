"""What `pip install` delivers: the wheel holds every file of the package, the resources the labs
and the CLI read included, and its version is segkeras.__version__. (.ci/wheel_check.sh installs
that wheel into a fresh venv and runs labs 3 and 6 from it.)"""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import segkeras
from segkeras import pretrain, resources

ROOT = Path(__file__).resolve().parents[1]


def _tracked(folder: str) -> list[str]:
    """The files under ``folder`` that a clean clone has (git's index), as posix paths."""
    listed = subprocess.run(["git", "ls-files", "-z", folder], cwd=ROOT, capture_output=True,
                            check=True).stdout.decode()
    return sorted(name for name in listed.split("\0") if name)


def _read_at_run_time() -> list[Path]:
    """Every shipped file the code reads: each architecture's checkpoint and report, and the
    sample's annotations, images and masks."""
    paths = []
    for architecture in pretrain.ENCODERS:
        weights = pretrain.shipped_checkpoint(architecture)
        paths += [weights, weights.with_name(weights.name.replace(".weights.h5", ".json"))]
    sample = resources.path("sample")
    annotations = sample / "annotations.json"
    names = [image["file_name"] for image in json.loads(annotations.read_text())["images"]]
    paths += [annotations] + [sample / folder / name for name in names
                              for folder in ("images", "masks")]
    return paths


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """The wheel setuptools builds from the tracked files (what a clean clone would build)."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    for name in ["pyproject.toml", "README.md"] + _tracked("segkeras"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    built = subprocess.run(
        [sys.executable, "-c", "import sys; from setuptools import build_meta; "
         "print(build_meta.build_wheel(sys.argv[1]))", str(out)],
        cwd=source, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    assert built.returncode == 0, built.stderr[-3000:]
    return zipfile.ZipFile(out / built.stdout.split()[-1])


def test_every_file_the_code_reads_at_run_time_is_tracked_and_in_the_package():
    tracked = set(_tracked("segkeras"))
    for path in _read_at_run_time():
        assert path.is_file(), path
        relative = path.relative_to(ROOT).as_posix()
        assert relative in tracked, f"{relative} is not committed: a clean clone lacks it"


def test_the_wheel_holds_every_tracked_file_of_the_package(wheel):
    names = set(wheel.namelist())
    missing = [name for name in _tracked("segkeras") if name not in names]
    assert not missing, f"left out of the wheel (pyproject's package-data?): {missing[:10]}"
    assert any(name.startswith("segkeras/resources/pretrained/") for name in names)


def test_the_wheel_has_segkeras_version(wheel):
    metadata = next(name for name in wheel.namelist() if name.endswith(".dist-info/METADATA"))
    lines = wheel.read(metadata).decode().splitlines()
    assert f"Version: {segkeras.__version__}" in lines
