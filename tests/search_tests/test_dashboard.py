"""``effscale dashboard`` and :mod:`effscale.search.dashboard`: a served study shows its trials, user attrs,
feasibility (the dashboard's ``constraints`` list), note and artifacts; feasibility recorded for
the dashboard is not counted twice by Optuna; non-loopback hosts need ``--allow-remote``."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import optuna
import pytest

from effscale.search.cli import main
from effscale.search.dashboard import (
    FIRST_USER_ATTRS,
    FeasibilityView,
    artifact_store_for,
    attach_files,
    attach_trial_metrics,
    check_host,
    is_loopback,
    list_artifacts,
    make_app,
    prepare_study,
    record_feasibility,
    study_note,
    write_study_note,
)
from effscale.search.objective import Objective
from effscale.search.plots import write_plots
from effscale.search.runners.optuna_runner import run_study
from effscale.search.study_file import load_study_file
from effscale.search.trials import (
    CONSTRAINTS_ATTR,
    constraint_values,
    dashboard_constraints,
    find_region,
    load_study,
    pareto_front,
)
from effscale.search.version import effscale_version
from tests.search_tests.test_report import write_band_study

ROOT = Path(__file__).resolve().parents[2]
TRIAL_ATTRS = {
    "macs",
    "params",
    "activations",
    "cost_ratio",
    "feasible",
    "width_multiplier",
    "depth_multiplier",
    "resolution",
    "bifpn_channels",
    "bifpn_repeats",
}


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def get_bytes(url: str) -> tuple[str, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.headers["Content-Type"], response.read()


def wait_for(url: str, *, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return get_json(url)
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def first_line(process: subprocess.Popen, *, timeout: float) -> str:
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(process.stdout.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        process.kill()
        raise AssertionError(f"no output in {timeout} s: {process.stderr.read()}") from None


def test_dashboard_serves_feasibility_attrs_note_and_artifacts(tmp_path):
    path = write_band_study(tmp_path)  # the default storage: band.db (SQLite) next to it
    definition = load_study_file(path)
    run_study(definition, quiet=True)
    study = load_study(definition)
    store = artifact_store_for(definition)

    # two more trials the way the objective attaches metrics.json (a trial only takes files
    # while it runs)
    objective = Objective(definition, num_classes=90)

    def with_metrics(trial):
        try:
            return objective(trial)
        finally:
            attach_trial_metrics(trial, artifact_store=store, metrics={"source": "test"})

    study.optimize(with_metrics, n_trials=2)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 14 and store._base_path == tmp_path / "band.artifacts"

    process = subprocess.Popen(
        [sys.executable, "-m", "effscale.search.cli", "dashboard", str(path), "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        line = first_line(process, timeout=90)
        assert "http://127.0.0.1:" in line, line + process.stderr.read()
        base = line.split(" at ", 1)[1].split("/dashboard/")[0]

        (summary,) = wait_for(f"{base}/api/studies")["study_summaries"]
        assert summary["study_name"] == "surrogate-compound"
        assert summary["directions"] == ["maximize", "minimize"]
        study_attrs = {a["key"]: a["value"] for a in summary["user_attrs"]}
        assert study_attrs["study_file"] == definition.text
        assert study_attrs["effscale_version"] == effscale_version()

        detail = get_json(f"{base}/api/studies/{summary['study_id']}")
        assert [t["number"] for t in detail["trials"]] == list(range(14))
        by_number = {t.number: t for t in trials}
        infeasible = 0
        for shown in detail["trials"]:
            trial = by_number[shown["number"]]
            violation = trial.system_attrs["constraints:cost_ratio"]  # Trial.set_constraint's
            assert shown["constraints"] == [violation]  # the list the dashboard reads
            attrs = {a["key"]: a["value"] for a in shown["user_attrs"]}
            assert TRIAL_ATTRS <= set(attrs)
            assert attrs["macs"] == str(trial.user_attrs["macs"])
            if trial.user_attrs["feasible"]:
                assert violation <= 0 and shown["state"] == "Complete"
                assert float(attrs["ap"]) == pytest.approx(shown["values"][0])
                assert shown["values"][1] == trial.user_attrs["macs"]
            else:
                infeasible += 1
                assert violation > 0 and shown["state"] == "Pruned"
                assert "outside [1.4000, 2.6000]" in attrs["infeasible_reason"]
        assert infeasible >= 3
        # Optuna itself still sees one constraint per trial: the view changed nothing stored
        assert all(set(t.constraints) == {"cost_ratio"} for t in study.get_trials())
        assert {t["number"] for t in detail["best_trials"]} == {
            t.number for t in pareto_front(trials)
        }
        assert detail["objective_names"] == ["AP", "MACs per image (phi=1)"]

        note = detail["note"]["body"]
        assert f"Made by effscale {effscale_version()}" in note
        assert definition.text.rstrip() in note

        plots = {a["filename"]: a for a in detail["artifacts"]}
        with tempfile.TemporaryDirectory() as folder:  # the plots effscale draws, all attached
            drawn = write_plots(definition, trials, out=Path(folder)).paths.values()
            assert set(plots) == {Path(p).name for p in drawn} >= {"ap_vs_macs.png"}
        kind, body = get_bytes(
            f"{base}/artifacts/{summary['study_id']}/{plots['ap_vs_macs.png']['artifact_id']}"
        )
        assert kind == "image/png" and body.startswith(b"\x89PNG") and len(body) > 10_000
        for shown in detail["trials"][12:]:
            (metrics,) = shown["artifacts"]
            assert metrics["filename"] == "metrics.json"
            _, body = get_bytes(
                f"{base}/artifacts/{summary['study_id']}/{shown['trial_id']}/"
                f"{metrics['artifact_id']}"
            )
            document = json.loads(body)
            trial = by_number[shown["number"]]
            assert document["number"] == trial.number and document["source"] == "test"
            assert document["cost_ratio"] == trial.user_attrs["cost_ratio"]
            assert document["constraints"] == trial.constraints
        assert all(shown["artifacts"] == [] for shown in detail["trials"][:12])
    finally:
        process.send_signal(signal.SIGINT)
        try:
            rc = process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        process.stdout.close()
        process.stderr.close()
    assert rc == 0

    # a second start stores no second copy of unchanged plots
    from effscale.search.dashboard import attach_study_plots

    again = attach_study_plots(study, definition, artifact_store=store)
    assert sorted(again) == sorted(a["artifact_id"] for a in plots.values())


def test_non_loopback_host_is_refused_without_allow_remote(tmp_path, capsys):
    path = write_band_study(tmp_path)
    assert main(["dashboard", str(path), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("effscale dashboard: error: --host 0.0.0.0")
    assert "no authentication" in err and "--allow-remote" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["band.toml"]  # nothing created

    for host in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"):
        assert is_loopback(host) and check_host(host, allow_remote=False)
    for host in ("0.0.0.0", "::", "", "10.0.0.1", "192.168.1.20"):
        assert not is_loopback(host)
        with pytest.raises(ValueError, match="`allow_remote`"):
            check_host(host, allow_remote=False)
        assert check_host(host, allow_remote=True) is False  # allowed, reported non-loopback


def wsgi_get(app, path: str) -> dict:
    environ: dict = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
    setup_testing_defaults(environ)
    status: list[str] = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    assert status[0].startswith("200"), (status, body[:300])
    return json.loads(body)


def test_record_feasibility_is_read_once_by_optuna_and_by_the_dashboard(tmp_path):
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "toy.journal"))
    )
    study = optuna.create_study(
        study_name="toy",
        storage=storage,
        direction="maximize",
        sampler=optuna.samplers.GPSampler(seed=0, n_startup_trials=4),
    )

    def objective(trial):
        x = trial.suggest_float("x", 0.0, 1.0)
        record_feasibility(trial, {"cost_ratio": x - 0.5})
        return x

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=8)  # GP reads the constraint: all 8 complete
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 8
    for t in trials:
        violation = t.params["x"] - 0.5
        assert t.system_attrs[CONSTRAINTS_ATTR] == [pytest.approx(violation)]
        assert t.constraints == {"0": pytest.approx(violation)}  # once, not twice
        assert constraint_values(t) == {"cost_ratio": pytest.approx(violation)}
    best = max((t for t in trials if t.params["x"] <= 0.5), key=lambda t: t.value)

    app = make_app(storage)
    detail = wsgi_get(app, f"/api/studies/{study._study_id}")
    assert [t["constraints"] for t in detail["trials"]] == [
        [pytest.approx(t.params["x"] - 0.5)] for t in trials
    ]
    # single objective: the dashboard's best trial is the best feasible one, not max x
    assert [t["number"] for t in detail["best_trials"]] == [best.number]
    assert max(t.value for t in trials) > best.value

    # refusals: NaN, a finished trial, a trial that already used Trial.set_constraint
    trial = study.ask()
    with pytest.raises(ValueError, match="finite"):
        record_feasibility(trial, {"cost_ratio": math.nan})
    trial.set_constraint("cost_ratio", 0.1)
    with pytest.raises(ValueError, match="already recorded"):
        record_feasibility(trial, {"cost_ratio": 0.1})
    study.tell(trial, 0.2)
    with pytest.raises(ValueError, match="running optuna.Trial"):
        record_feasibility(study.trials[-1], {"cost_ratio": 0.1})
    # ... and the view shows the set_constraint trial in the dashboard's form too
    shown = FeasibilityView(storage).get_trial(study.trials[-1]._trial_id)
    assert dashboard_constraints(shown.system_attrs) == [0.1]
    assert CONSTRAINTS_ATTR not in storage.get_trial(study.trials[-1]._trial_id).system_attrs


def test_attach_files_dedupes_and_stays_inside_its_folder(tmp_path):
    definition = load_study_file(write_band_study(tmp_path, storage="journal:///j.journal"))
    study = optuna.create_study(
        study_name="s",
        storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(tmp_path / "j.journal"))
        ),
    )
    store = artifact_store_for(definition)
    out = tmp_path / "exported"
    (out / "sub").mkdir(parents=True)
    (out / "table.csv").write_text("phi,macs\n0,1\n")
    (out / "sub" / "family.json").write_text("{}")
    (tmp_path / "secret.txt").write_text("no")

    ids = attach_files(study, ["table.csv", "sub/family.json"], artifact_store=store, under=out)
    assert attach_files(study, ["table.csv"], artifact_store=store, under=out) == ids[:1]
    (out / "table.csv").write_text("phi,macs\n0,2\n")  # changed bytes: a new artifact
    assert attach_files(study, [out / "table.csv"], artifact_store=store) != ids[:1]
    assert sorted(a["filename"] for a in list_artifacts(study)) == [
        "family.json",
        "table.csv",
        "table.csv",
    ]
    assert len(list((tmp_path / "band.artifacts").iterdir())) == 3

    for bad in ("../secret.txt", str(tmp_path / "secret.txt"), "sub/../../secret.txt"):
        with pytest.raises(ValueError, match="leave|outside"):
            attach_files(study, [bad], artifact_store=store, under=out)
    with pytest.raises(ValueError, match="named 'table.csv'"):
        attach_files(study, [out / "table.csv", out / "table.csv"], artifact_store=store)
    with pytest.raises(FileNotFoundError):
        attach_files(study, ["missing.csv"], artifact_store=store, under=out)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    with pytest.raises(ValueError, match="finished trials"):
        attach_files(study.trials[0], [out / "table.csv"], artifact_store=store)

    text = 'name = "x"\n# a fence inside: ```\n'
    write_study_note(study, text, "9.9")
    from optuna_dashboard import get_note

    note = get_note(study)
    assert "Made by effscale 9.9" in note and "````toml\n" + text.rstrip() + "\n````" in note


def journal_storage(path: Path):
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def wsgi_raw(app, path: str) -> tuple[dict[str, str], bytes]:
    environ: dict = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
    setup_testing_defaults(environ)
    status: list[str] = []
    headers: dict[str, str] = {}

    def start(s, h, exc_info=None):
        status.append(s)
        headers.update(h)

    body = b"".join(app(environ, start))
    assert status[0].startswith("200"), (status, body[:300])
    return headers, body


def test_the_view_shows_gamma_the_facts_first_and_a_feasibility_figure(surrogate_study):
    path = surrogate_study(
        {
            "study.n_trials": "10",
            "study.seeds": "[0, 1, 2]",
            "study.storage": '"journal:///view.journal"',
            "objective.surrogate.noise": "0.005",
            "constraint.kind": '"formula"',
            "space.alpha": "{low = 1.0, high = 1.6}",
            "space.beta": "{low = 1.0, high = 1.4}",
            "space.gamma": "{low = 1.0, high = 1.25}",
        }
    )
    definition = load_study_file(path)
    run_study(definition, quiet=True)
    trials = load_study(definition).get_trials(deepcopy=False)
    infeasible = sorted(t.number for t in trials if t.user_attrs["feasible"] is False)
    assert infeasible and len(infeasible) < len(trials)
    journal = path.with_name("view.journal")
    stored = journal.read_bytes()

    app = make_app(journal_storage(journal), definition=definition)
    detail = wsgi_get(app, "/api/studies/0")
    (gamma,) = [p for p in detail["union_search_space"] if p["name"] == "gamma"]
    assert gamma["distribution"]["low"] == 1.0 and gamma["distribution"]["high"] == 1.25
    by_number = {t.number: t for t in trials}
    for shown in detail["trials"]:
        trial = by_number[shown["number"]]
        params = {p["name"]: p["param_external_value"] for p in shown["params"]}
        assert params["gamma"] == str(trial.user_attrs["gamma"])  # derived, shown as a param
        keys = [a["key"] for a in shown["user_attrs"]]
        first = [k for k in FIRST_USER_ATTRS if k in trial.user_attrs]
        assert keys[: len(first)] == first and sorted(keys) == sorted(trial.user_attrs)

    (figure,) = [g for g in detail["plotly_graph_objects"] if g["id"] == "effscale-feasibility"]
    traces = {t["name"]: t for t in json.loads(figure["graph_object"])["data"]}
    assert traces["infeasible (pruned before scoring)"]["x"] == infeasible
    assert sorted(traces["feasible"]["x"] + infeasible) == sorted(by_number)

    headers, body = wsgi_raw(app, "/effscale/api/studies/0/summary")
    summary = json.loads(body, parse_constant=lambda c: pytest.fail(f"bare {c}"))
    flagged = [
        s["number"]
        for s in summary["trials"]
        if {"label": "Infeasible", "tone": "error"} in s["badges"]
    ]
    assert flagged == infeasible
    headers, body = wsgi_raw(app, "/dashboard")
    assert b'<script defer src="/effscale/dashboard_page.js"></script>' in body
    assert int(headers["Content-Length"]) == len(body)
    headers, body = wsgi_raw(app, "/effscale/dashboard_page.js")
    assert headers["Content-Type"].startswith("text/javascript") and b"effscale-badge" in body

    assert journal.read_bytes() == stored  # the view wrote nothing


def test_the_study_note_shows_the_answer_and_keeps_a_users_edit(surrogate_study):
    path = surrogate_study(
        {"study.n_trials": "8", "study.seeds": "[0, 1, 2]", "objective.surrogate.noise": "0.002"}
    )
    definition = load_study_file(path)
    run_study(definition, quiet=True)
    study = load_study(definition)
    from optuna_dashboard import get_note, save_note

    prepare_study(study, definition, artifact_store=None, version="9.9", plots=False)
    region = find_region(study.get_trials())
    note = get_note(study)
    assert f"**Verdict: {region.verdict}.** {region.advice}" in note
    assert ", ".join(f"#{n}" for n in region.members) in note
    low, high = region.ranges["alpha"]
    assert f"| alpha | {low:.4f} | {high:.4f} |" in note
    assert note.index("### The answer") < note.index("### Study file")

    # more trials: the next dashboard start brings effscale's own note up to date ...
    run_study(
        dataclasses.replace(definition, study=dataclasses.replace(definition.study, n_trials=14)),
        quiet=True,
    )
    prepare_study(study, definition, artifact_store=None, version="9.9", plots=False)
    updated = find_region(study.get_trials())
    text = study.user_attrs.get("study_file", definition.text)
    made_by = study.user_attrs.get("effscale_version", "9.9")
    assert get_note(study) == study_note(
        study_name=study.study_name, study_file_text=text, version=made_by, region=updated
    )
    assert updated.ranges != region.ranges or updated.members != region.members
    assert len(study.get_trials()) == 14
    # ... but never replaces a note the user has written
    save_note(study, "my own findings")
    prepare_study(study, definition, artifact_store=None, version="9.9", plots=False)
    assert get_note(study) == "my own findings"
