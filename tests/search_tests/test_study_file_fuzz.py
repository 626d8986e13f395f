"""Issue #8, point 5: malformed or mutated study files (wrong types, unknown keys, missing keys,
empty ranges, coefficients below 1, tolerance <= 0, missing data, broken TOML), made by
hypothesis from the shipped studies, each get a one-line error naming the key and exit code 2
from ``effscale search``, and the storage is never touched: no database, journal or cache
appears next to the study file.

    python -m pytest tests/search_tests/test_study_file_fuzz.py -s   # prints the figure
"""

from __future__ import annotations

import copy
import datetime as dt
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from effscale.search.cli import main
from effscale.search.study_file import StudyFileError, parse_study_text

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

STUDIES = Path(__file__).resolve().parents[2] / "studies"


def _shipped() -> dict[str, dict[str, Any]]:
    """The shipped studies that are valid in this checkout, parsed."""
    seeds = {}
    for path in sorted(STUDIES.glob("*.toml")):
        text = path.read_text()
        try:
            parse_study_text(text, path=path)
        except (StudyFileError, ValueError):  # pragma: no cover - a study being edited
            continue
        seeds[path.name] = tomllib.loads(text)
    return seeds


SEEDS = _shipped()
EXAMPLES: Counter = Counter()


def _leaves(data: dict, prefix: str = "") -> list[tuple[str, ...]]:
    """Every key path of ``data`` (tables included), as tuples."""
    paths = []
    for key, value in data.items():
        path = (*prefix, key) if prefix else (key,)
        paths.append(path)
        if isinstance(value, dict):
            paths.extend(_leaves(value, path))
    return paths


def _tables(data: dict, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [prefix]
    for key, value in data.items():
        if isinstance(value, dict):
            found.extend(_tables(value, (*prefix, key)))
    return found


def _get(data: dict, path: tuple[str, ...]) -> Any:
    for key in path:
        data = data[key]
    return data


def _set(data: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        data = data.setdefault(key, {})
    data[path[-1]] = value


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return "datetime"
    return {str: "string", list: "list", dict: "table"}[type(value)]


#: values of every TOML type; a key is given one of a type it does not hold
ALIENS = [
    dt.datetime(1979, 5, 27, 7, 32, tzinfo=dt.timezone.utc),
    True,
    "zz",
    ["zz"],
    {"zz": 1},
    0.5,
    7,
    -3,
]


KINDS = ("wrong type", "unknown key", "missing key", "bad value", "broken toml")
PER_KIND = 60  # examples per kind of mutation: 300 in all


@st.composite
def mutated(draw, kind: str) -> tuple[str, str, str]:
    """(study text, the key its error must name, the mutation's kind)."""
    name = draw(st.sampled_from(sorted(SEEDS)))
    data = copy.deepcopy(SEEDS[name])
    if kind == "wrong type":
        path = draw(st.sampled_from(_leaves(data)))
        current = _kind(_get(data, path))
        value = draw(st.sampled_from([a for a in ALIENS if _kind(a) != current]))
        _set(data, path, value)
        return tomli_w.dumps(data), ".".join(path), kind
    if kind == "unknown key":
        table = draw(st.sampled_from(_tables(data)))
        key = "zz_" + draw(st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8))
        value = draw(st.sampled_from([1, "x", [1], {"a": 1}]))
        if table:
            _get(data, table)[key] = value
        else:  # a top-level unknown section
            data[key] = value if isinstance(value, dict) else {"a": value}
        return tomli_w.dumps(data), ".".join((*table, key)), kind
    if kind == "missing key":
        candidates = _missing_candidates(data)
        path, expected = draw(st.sampled_from(candidates))
        parent = _get(data, path[:-1]) if len(path) > 1 else data
        del parent[path[-1]]
        return tomli_w.dumps(data), expected, kind
    if kind == "bad value":
        return _bad_value(draw, data)
    # broken TOML: a line that no TOML parser accepts, at a random line
    lines = tomli_w.dumps(data).splitlines()
    at = draw(st.integers(0, len(lines)))
    garbage = draw(
        st.sampled_from(
            [
                "= 1",
                "alpha = ",
                "[unclosed",
                "x = [1, 2",
                'name = "no end',
                "a.b..c = 1",
                "key = 1 2",
            ]
        )
    )
    lines.insert(at, garbage)
    return "\n".join(lines) + "\n", "toml", kind


def _missing_candidates(data: dict) -> list[tuple[tuple[str, ...], str]]:
    objective = data.get("objective", {}).get("kind", "train")
    sampler = data["study"].get("sampler", "tpe")
    found: list[tuple[tuple[str, ...], str]] = [
        (("space", "alpha"), "space.alpha"),
        (("space", "beta"), "space.beta"),
        (("base",), "base"),
        (("space",), "space"),
        (("study",), "study"),
    ]
    if sampler != "grid" and "n_trials" in data["study"]:
        found.append((("study", "n_trials"), "study.n_trials"))
    if data.get("constraint", {}).get("mode", "solve") == "band":
        found.append((("space", "gamma"), "space.gamma"))
    for axis in ("alpha", "beta", "gamma"):
        value = data["space"].get(axis)
        if isinstance(value, dict) and "low" in value:
            found.append((("space", axis, "low"), f"space.{axis}.low"))
            found.append((("space", axis, "high"), f"space.{axis}.high"))
    if objective == "surrogate":
        found += [
            (("objective", "surrogate"), "objective.surrogate"),
            (("objective", "surrogate", "A"), "objective.surrogate.A"),
            (("objective", "surrogate", "c"), "objective.surrogate.c"),
            (("objective", "surrogate", "p", "width"), "objective.surrogate.p.width"),
        ]
    else:
        found.append((("data",), "data"))
        budget = next(k for k in ("epochs", "steps", "seconds") if k in data["train"])
        found.append((("train", budget), "train"))
        if "generate" in data.get("data", {}):
            found.append((("data", "generate", "train"), "data.generate.train"))
    return found


def _bad_value(draw, data: dict) -> tuple[str, str, str]:
    below_one = draw(st.floats(-10, 0.999, allow_nan=False))
    choices: list[tuple[tuple[str, ...], Any, str]] = [
        (
            ("constraint", "tolerance"),
            draw(st.one_of(st.floats(-1, 0), st.floats(1, 100))),
            "constraint.tolerance",
        ),
        (("constraint", "target"), draw(st.floats(-5, 1)), "constraint.target"),
        (("space", "alpha"), below_one, "space.alpha"),
        (("space", "beta"), {"low": below_one, "high": 1.3}, "space.beta.low"),
        (("space", "alpha"), _empty_range(draw), "space.alpha"),
        (("space", "width_growth"), draw(st.floats(4.01, 1e6)), "space.width_growth"),
        (("study", "n_trials"), draw(st.integers(-5, 0)), "study.n_trials"),
        (("study", "seed"), draw(st.integers(-100, -1)), "study.seed"),
        (
            ("study", "sampler"),
            draw(st.sampled_from(["TPE", "cmaes", "", "grid "])),
            "study.sampler",
        ),
        (
            ("base", "phi_proxy"),
            draw(st.one_of(st.floats(11.01, 100), st.floats(-100, -8.01))),
            "base.phi_proxy",
        ),
        (
            ("base", "resolution"),
            draw(st.integers(33, 4000).filter(lambda r: r % 8)),
            "base.resolution",
        ),
        (("base", "preset"), draw(st.sampled_from(["d8", "D0", "b0"])), "base.preset"),
        (("space", "alpha"), [], "space.alpha"),
        (("space", "beta"), [1.1, 1.1], "space.beta"),
        (("execution", "workers"), draw(st.integers(-3, 0)), "execution.workers"),
        (("execution", "gpus"), [0, 0], "execution.gpus"),
        (
            ("study", "objectives"),
            draw(st.sampled_from([[], ["macs"], ["ap", "ap"]])),
            "study.objectives",
        ),
    ]
    objective = data.get("objective", {})
    if objective.get("kind") == "surrogate":
        choices += [
            (
                ("objective", "surrogate", "noise"),
                draw(st.floats(-1, -1e-9)),
                "objective.surrogate.noise",
            ),
            (
                ("objective", "surrogate", "c", "depth"),
                draw(st.floats(-1, 0)),
                "objective.surrogate.c.depth",
            ),
        ]
    else:
        choices += [
            (("train", "batch_size"), draw(st.integers(-4, 1)), "train.batch_size"),
            (("train", "lr"), draw(st.floats(-1, 0)), "train.lr"),
            (("train", "optimizer"), "lamb", "train.optimizer"),
            (
                ("data", "generate", "num_classes"),
                draw(st.integers(9, 50)),
                "data.generate.num_classes",
            ),
        ]
    path, value, key = draw(st.sampled_from(choices))
    _set(data, path, value)
    return tomli_w.dumps(data), key, "bad value"


def _empty_range(draw) -> dict:
    low = draw(st.floats(1.0, 3.5))
    return {"low": low, "high": draw(st.floats(1.0, low))}


def _check(case: tuple[str, str, str]) -> None:
    text, key, kind = case
    EXAMPLES[kind] += 1
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "study.toml"
        path.write_text(text)
        with pytest.raises(StudyFileError):  # the same verdict without the command line
            parse_study_text(text, path=path)
        err = _run_search(path)
        assert err.count("\n") == 1, err
        assert "Traceback" not in err, err
        pattern = rf"^effscale search: error: study\.toml: {re.escape(key)}(\b|\[|\.|:)"
        assert re.match(pattern, err), (key, err, text)
        assert sorted(p.name for p in Path(folder).iterdir()) == ["study.toml"], (
            "the storage (or the data cache) was touched"
        )


def _run_search(path: Path) -> str:
    import contextlib
    import io

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["search", str(path), "--quiet"])
    assert code == 2, stderr.getvalue()
    assert stdout.getvalue() == ""
    return stderr.getvalue()


def test_a_bad_study_file_gets_one_line_naming_the_key_and_no_storage(capsys):
    assert {
        "quickstart.toml",
        "surrogate_compound.toml",
        "efficientnet_compound.toml",
        "bifpn_width.toml",
    } <= set(SEEDS)
    EXAMPLES.clear()
    start = time.perf_counter()
    for kind in KINDS:  # hypothesis, PER_KIND mutated study files of each kind
        settings(
            max_examples=PER_KIND,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )(given(mutated(kind))(_check))()
    assert set(EXAMPLES) == set(KINDS) and sum(EXAMPLES.values()) >= 200, EXAMPLES
    with capsys.disabled():
        print(
            f"\nFIGURE study-file fuzz: {sum(EXAMPLES.values())} mutated files from "
            f"{len(SEEDS)} shipped studies ({dict(EXAMPLES)}): all exit 2 with one line "
            f"naming the key, storage untouched; {time.perf_counter() - start:.1f} s"
        )


def test_an_existing_storage_is_untouched_by_a_bad_file(surrogate_study, capsys):
    path = surrogate_study({"study.n_trials": "2"})
    assert main(["search", str(path), "--quiet"]) == 0
    db = path.parent / "study.db"
    before = db.read_bytes()
    path.write_text(path.read_text().replace("tolerance = 0.05", "tolerance = 0"))
    capsys.readouterr()
    assert main(["search", str(path), "--quiet"]) == 2
    assert "constraint.tolerance: must be in (0, 1)" in capsys.readouterr().err
    assert db.read_bytes() == before


@pytest.mark.parametrize("value", ['["median"]', "{kind = 1}"])
def test_a_pruner_kind_of_the_wrong_type_is_one_line(surrogate_study, capsys, value):
    """Found by the fuzz above: ``kind`` was looked up in a dict, so an unhashable value
    (a list, a table) raised TypeError with a traceback instead of naming the key."""
    path = surrogate_study(append=f"\n[pruner]\nkind = {value}\n")
    assert main(["search", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("effscale search: error: study.toml: pruner.kind: ") and err.count("\n") == 1
    ), err
    assert sorted(p.name for p in path.parent.iterdir()) == ["study.toml"]
