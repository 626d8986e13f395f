"""What the commands print (issue 16, part 5): tables that fit the terminal they are printed to
(a real pseudo-terminal of 80, 100 and 160 columns) and keep their width in a pipe; strict JSON
(``null``, never ``NaN``) from ``--format json`` and in ``metrics.json``; hints whose commands
work when pasted, from a folder with a space in its name; and the paper family refusing φ past
D7."""

from __future__ import annotations

import fcntl
import io
import json
import math
import os
import pty
import re
import select
import shlex
import struct
import subprocess
import sys
import termios
from pathlib import Path

import numpy as np
import pytest

from effscale.detector.data import make_synthetic_coco
from effscale.search.cli import main
from effscale.search.commands._output import json_text, print_records
from effscale.search.study_file import load_study_file
from effscale.search.trials import load_study

ROOT = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def strict_loads(text: str):
    """``json.loads`` that refuses ``NaN`` and ``Infinity``, as strict parsers do."""

    def refuse(constant: str):
        raise ValueError(f"not strict JSON: bare {constant}")

    return json.loads(text, parse_constant=refuse)


def in_terminal(args: list[str], columns: int, *, cwd: Path) -> str:
    """Run ``effscale ARGS`` with its output on a pseudo-terminal ``columns`` wide; returns
    what it printed, colours stripped."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    process = subprocess.Popen(
        [sys.executable, "-m", "effscale.search.cli", *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        env={**env, "PYTHONPATH": str(ROOT), "TERM": "xterm"},
    )
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 120)
        if not ready:
            process.kill()
            raise AssertionError("no output from effscale in 120 s")
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:  # the terminal closed: the process exited
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert process.wait(timeout=60) == 0, b"".join(chunks).decode(errors="replace")
    return ANSI.sub("", b"".join(chunks).decode())


@pytest.fixture(scope="module")
def paper_params(tmp_path_factory):
    """The paper family's parameter counts (from its manifest), as the table prints them."""
    out = tmp_path_factory.mktemp("paper") / "family"
    assert main(["export", "--paper", "--out", str(out)]) == 0
    manifest = strict_loads((out / "manifest.json").read_text())
    return [f"{m['num_params']:,}" for m in manifest["members"].values()]


@pytest.mark.slow
@pytest.mark.parametrize("columns", [80, 100, 160])
def test_tables_fit_the_terminal_and_keep_every_value(tmp_path, columns, paper_params):
    text = in_terminal(["export", "--paper", "--out", "family"], columns, cwd=tmp_path)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= columns, max(lines, key=len)
    for params in paper_params:  # whole numbers, neither cut short nor folded
        assert params in text, params
    assert sum(line.startswith("│ d") for line in lines) % 8 == 0


@pytest.mark.slow
def test_piped_tables_keep_their_natural_width(tmp_path, paper_params):
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    result = subprocess.run(
        [sys.executable, "-m", "effscale.search.cli", "export", "--paper", "--out", "family"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**env, "PYTHONPATH": str(ROOT)},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("│ d")]
    assert len(rows) == 8  # one line per member: nothing wrapped or split into parts
    for row, params in zip(rows, paper_params):
        assert params in row


def test_json_is_strict_null_for_what_is_not_finite():
    stream = io.StringIO()
    records = [{"ap": math.nan, "aps": [math.inf, 0.5], "apm": np.float32("nan"), "n": 2}]
    print_records(records, "json", stream=stream)
    assert strict_loads(stream.getvalue()) == [
        {"ap": None, "aps": [None, 0.5], "apm": None, "n": 2}
    ]
    assert strict_loads(json_text({"x": -math.inf, "y": np.float64(0.25)})) == {
        "x": None,
        "y": 0.25,
    }


TRAIN = ["--phi", "-4", "--image-size", "64", "--steps", "1", "--batch-size", "4"]
TRAIN += ["--device", "cpu", "--quiet"]


@pytest.mark.slow
def test_train_json_and_metrics_json_are_strict(tmp_path, capsys):
    make_synthetic_coco(tmp_path / "data", n_train=16, n_val=8, image_size=64, seed=0)
    out = tmp_path / "run"
    code = main(
        ["train", "--data", str(tmp_path / "data"), *TRAIN, "--format", "json", "--out", str(out)]
    )
    printed = capsys.readouterr().out
    assert code == 0
    shown = strict_loads(printed)
    stored = strict_loads((out / "metrics.json").read_text())
    # 64 px images hold no medium or large objects: COCO leaves those breakdowns undefined
    assert shown["apm"] is None and shown["apl"] is None
    assert stored["apm"] is None and stored["history"][-1]["apm"] is None
    assert shown["ap"] == pytest.approx(stored["ap"]) and math.isfinite(stored["ap"])


def _pasted(hint: str) -> list[str]:
    """The command inside a hint's backticks, split as a shell would."""
    (command,) = re.findall(r"`(effscale [^`]+)`", hint)
    words = shlex.split(command)
    assert words[0] == "effscale"
    return words[1:]


def test_hints_print_commands_that_work_when_pasted(surrogate_study, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "my studies" / "sub"
    folder.mkdir(parents=True)
    path = surrogate_study({"study.n_trials": "6"})
    study = folder / "s.toml"
    study.write_text(path.read_text())
    monkeypatch.chdir(tmp_path)

    for command in (["status"], ["storage", "check"], ["dashboard"]):
        assert main([*command, "my studies/sub/s.toml"]) == 2
        err = capsys.readouterr().err
        assert _pasted(err) == ["search", "my studies/sub/s.toml"], err

    assert main(_pasted(err) + ["--quiet"]) == 0  # the pasted command runs the study
    capsys.readouterr()
    assert len(load_study(load_study_file(study)).get_trials()) == 6


def test_paper_family_refuses_phi_beyond_d7(tmp_path, capsys):
    out = tmp_path / "paper"
    assert main(["export", "--paper", "--phi", "0-9", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("effscale export: error: --phi: ")
    assert "D0..D7" in err and "8, 9" in err
    assert not out.exists()
    # the paper's own range, and extrapolation with given coefficients, still export
    assert main(["export", "--paper", "--phi", "6-7", "--out", str(out)]) == 0
    given = ["--alpha", "1.2", "--beta", "1.1", "--gamma", "1.15", "--phi", "8"]
    assert main(["export", *given, "--out", str(tmp_path / "beyond")]) == 0
    assert (tmp_path / "beyond" / "d8.toml").is_file()
