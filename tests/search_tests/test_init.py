"""``effscale init`` and the shipped studies (issue 16, part 6): every study of ``studies/`` is
found as ``effscale.studies`` package data; ``effscale init NAME --from TEMPLATE`` writes a
commented study named NAME that runs as a study with the command it prints; it never replaces a
file without ``--force``."""

from __future__ import annotations

import re
import shlex

import pytest

from effscale.search.cli import main
from effscale.search.study_file import load_study_file
from effscale.search.templates import new_study_text, shipped_studies
from effscale.search.trials import load_study
from effscale.search.version import effscale_version
from tests.search_tests.conftest import STUDIES


def test_every_shipped_study_is_package_data_and_starts_a_new_study(tmp_path):
    shipped = shipped_studies()
    assert sorted(shipped) == sorted(p.stem for p in STUDIES.glob("*.toml"))
    for template, path in shipped.items():
        assert path.read_text() == (STUDIES / f"{template}.toml").read_text()
        target = tmp_path / f"new_{template}.toml"
        text = new_study_text(template=template, name=target.stem, path=target, version="9.9")
        assert text.startswith("# Study ") and "effscale 9.9" in text
        assert f"studies/{template}.toml" not in text  # its commands name the new file
        target.write_text(text)
        definition = load_study_file(target)  # reads as a study, under its new name
        assert definition.study.name == target.stem


def test_init_writes_a_commented_study_that_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["init", "mine", "--from", "surrogate_compound"]) == 0
    out = capsys.readouterr().out
    path = tmp_path / "mine.toml"
    text = path.read_text()
    assert re.search(r'(?m)^name = "mine"$', text)
    comments = [line for line in text.splitlines() if line.startswith("#")]
    assert len(comments) >= 10 and f"effscale {effscale_version()}" in comments[0]
    # every line of the template but the name is kept
    template = (STUDIES / "surrogate_compound.toml").read_text().splitlines()
    kept = set(text.splitlines())
    missing = [line for line in template if line not in kept and not line.startswith("name =")]
    assert all("studies/surrogate_compound.toml" in line for line in missing), missing

    # the printed command runs it
    (command,) = re.findall(r"`(effscale search [^`]+)`", out)
    assert main([*shlex.split(command)[1:], "--quiet"]) == 0
    capsys.readouterr()
    study = load_study(load_study_file(path))
    assert study.study_name == "mine"
    assert sum(t.state.name == "COMPLETE" for t in study.get_trials()) >= 20


def test_init_refuses_to_replace_a_file_and_names_the_choices(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken.toml").write_text("# mine\n")
    assert main(["init", "taken"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("effscale init: error: NAME taken: ")
    assert "--force" in err and (tmp_path / "taken.toml").read_text() == "# mine\n"

    assert main(["init", "taken", "--force", "--from", "surrogate_compound"]) == 0
    assert 'name = "taken"' in (tmp_path / "taken.toml").read_text()
    capsys.readouterr()

    with pytest.raises(SystemExit) as exit_:
        main(["init", "x", "--from", "nope"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    for name in shipped_studies():
        assert name in err
    assert not (tmp_path / "x.toml").exists()

    assert main(["init", "no such folder/x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'no such folder' does not exist" in err


def test_init_in_a_folder_with_a_space_prints_a_pasteable_command(tmp_path, monkeypatch, capsys):
    (tmp_path / "my studies").mkdir()
    monkeypatch.chdir(tmp_path)
    assert main(["init", "my studies/first", "--from", "surrogate_compound"]) == 0
    out = capsys.readouterr().out
    (command,) = re.findall(r"`(effscale search [^`]+)`", out)
    assert shlex.split(command) == ["effscale", "search", "my studies/first.toml"]
    assert load_study_file(tmp_path / "my studies" / "first.toml").study.name == "first"
