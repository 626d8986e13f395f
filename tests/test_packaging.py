"""The wheel carries what effscale reads at run time besides its modules: the shipped studies
(``effscale/studies/*.toml``, for ``effscale init``) and the dashboard page's script. Built from
a copy of the project's files in a temporary folder (``pip wheel --no-build-isolation``, with
the setuptools installed here), so that no ``build/`` lands in the checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_ships_the_studies_and_the_dashboard_script(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("search", "detector", "studies"):
        shutil.copytree(ROOT / folder, source / folder, ignore=ignore)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(source),
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(tmp_path / "wheel"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = (tmp_path / "wheel").glob("effscale-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    studies = {f"effscale/studies/{p.name}" for p in (ROOT / "studies").glob("*.toml")}
    assert studies and studies <= names, sorted(studies - names)
    assert "effscale/search/dashboard_page.js" in names
    assert "effscale/search/templates.py" in names and "effscale/search/cli.py" in names
