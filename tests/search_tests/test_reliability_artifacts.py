"""Issue #8, point 6: checkpoints survive a kill in the middle of a write, a truncated or
corrupt one gets a clear one-line error, loading never unpickles arbitrary objects, and an
artifact name cannot escape its folder.

    python -m pytest tests/search_tests/test_reliability_artifacts.py -s   # prints the figures
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time

import pytest
import torch

from effscale.detector.train import CheckpointError, load_checkpoint, save_checkpoint
from effscale.search.cli import main
from effscale.search.output import safe_child

#: set by Exploit.__reduce__'s payload if an unpickler ever runs it
UNPICKLED: list[str] = []


def _record(tag: str) -> str:
    UNPICKLED.append(tag)
    return tag


class Exploit:
    """An object whose unpickling calls a function of the attacker's choice."""

    def __reduce__(self):
        return (_record, ("code ran while loading",))


def _state(size: int = 0) -> dict:
    return {
        "format": "effscale-checkpoint-1",
        "config": {"name": "x"},
        "model": {"w": torch.zeros(size or 4)},
        "step": 1,
        "epoch": 0,
    }


def test_a_checkpoint_with_a_pickled_object_is_refused(tmp_path, capsys):
    path = tmp_path / "checkpoint.pt"
    torch.save({**_state(), "extra": Exploit()}, path)
    UNPICKLED.clear()
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)
    assert UNPICKLED == []
    # the same file through the CLI: one line, exit 2, and the payload never runs
    data = tmp_path / "data"
    data.mkdir()
    assert main(["evaluate", str(path), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "checkpoint" in err
    assert UNPICKLED == []
    torch.load(path, weights_only=False)  # what an unsafe loader would have done
    assert UNPICKLED == ["code ran while loading"]


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_checkpoint_gets_one_clear_line(tmp_path, capsys, damage):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, _state(1000))
    data = path.read_bytes()
    path.write_bytes(
        {"truncated": data[: len(data) // 2], "garbage": os.urandom(len(data)), "empty": b""}[
            damage
        ]
    )
    (tmp_path / "data").mkdir()
    assert main(["evaluate", str(tmp_path), "--data", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "truncated or corrupt" in err and "delete it or use an earlier one" in err


def _writer(atomic_path: str, plain_path: str) -> None:  # runs in a forked child until killed
    state = _state(1 << 21)  # 8 MB of weights: a write takes a while
    while True:
        state["step"] += 1
        save_checkpoint(atomic_path, state)
        torch.save(state, plain_path)


@pytest.mark.slow
def test_a_checkpoint_write_killed_midway_leaves_a_readable_file(tmp_path, capsys):
    rounds, unreadable = 12, {"atomic": 0, "plain": 0}
    # children forked from a clean server that imported torch once: quick to start, and safe
    # (forking this process, whose threads may hold locks, can hang the child)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(
        ["effscale.detector.train", "tests.search_tests.test_reliability_artifacts"]
    )
    rng = random.Random(0)
    for i in range(rounds):
        atomic, plain = tmp_path / f"a{i}" / "checkpoint.pt", tmp_path / f"p{i}.pt"
        child = context.Process(target=_writer, args=(str(atomic), str(plain)), daemon=True)
        child.start()
        deadline = time.monotonic() + 60
        while not (atomic.exists() and plain.exists()) and time.monotonic() < deadline:
            assert child.is_alive(), f"the writer died: exit code {child.exitcode}"
            time.sleep(0.01)
        time.sleep(rng.uniform(0.05, 0.4))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        try:
            load_checkpoint(atomic)
        except CheckpointError:
            unreadable["atomic"] += 1
        try:
            torch.load(plain, weights_only=True)
        except Exception:
            unreadable["plain"] += 1
    with capsys.disabled():
        print(
            f"\nFIGURE checkpoint killed mid-write ({rounds} kill -9 rounds, 8 MB): "
            f"temp+fsync+os.replace unreadable {unreadable['atomic']}/{rounds}; plain "
            f"torch.save unreadable {unreadable['plain']}/{rounds}"
        )
    assert unreadable["atomic"] == 0


@pytest.mark.parametrize(
    "name",
    [
        "../escape.json",
        "a/../../escape.json",
        "/etc/passwd",
        "\\\\server\\share\\x",
        "C:\\x.json",
        "c:x.json",
        "..\\..\\x",
        "",
        "  ",
        "a\x00b",
        ".",
        "a/..",
        "~/.ssh/x",
    ],
)
def test_an_artifact_path_cannot_escape_its_folder(tmp_path, name):
    with pytest.raises(ValueError, match="would leave"):
        safe_child(tmp_path, name)


def test_safe_artifact_paths_inside_the_folder(tmp_path):
    assert safe_child(tmp_path, "best/config.json") == tmp_path / "best" / "config.json"
    assert safe_child(tmp_path, "./a.json") == tmp_path / "a.json"
    assert safe_child(tmp_path, "a..b.json") == tmp_path / "a..b.json"
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (tmp_path / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="outside"):
        safe_child(tmp_path, "link/x.json")
