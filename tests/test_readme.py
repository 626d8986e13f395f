"""The README's notebook example runs as written (in a copy of ``studies/``)."""

from __future__ import annotations

import re
import runpy
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(r"<!-- readme-example -->\n```python\n(.*?)```", text, re.S)
    assert match, "README.md lost its example block"
    return match.group(1)


def test_the_readme_example_runs(tmp_path, monkeypatch, capsys):
    shutil.copytree(REPO / "studies", tmp_path / "studies")
    script = tmp_path / "example.py"
    script.write_text(readme_example())
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    assert "GMACs per image at (640, 640)" in out
    assert re.search(r"^\d+ complete; best \d+ \{.alpha.", out, re.M)
    assert (tmp_path / "studies" / "surrogate_compound.db").is_file()
