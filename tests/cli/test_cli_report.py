"""``llmnas-transfer report``: a study folder end to end, help, and one-line errors (exit 2)."""

from __future__ import annotations

import contextlib
import io

import pytest

from llmnas_transfer.cli import main
from llmnas_transfer.summarize.figures import FIGURE_NAMES


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    """A tiny study written by the ``reproduce`` command (a few seconds)."""
    out = tmp_path_factory.mktemp("cli-study") / "study"
    rc, _, err = _run(["reproduce", "--out", str(out), "--datasets", "cifar-10,svhn",
                       "--tasks", "classification", "--trials", "2", "--iterations", "3",
                       "--candidates", "4", "--check-trials", "0", "--no-progress"])
    assert rc == 0, err
    return out


def test_report_of_a_study_folder(study_dir, tmp_path):
    out = tmp_path / "deeper" / "study.html"  # missing folders are created
    rc, stdout, stderr = _run(["report", str(study_dir), "--out", str(out), "--no-progress"])
    assert rc == 0, stderr
    assert stderr.strip() == f"wrote {out}" and stdout == ""
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    for title in ("Study", "Targets", "Tables", "Figures"):
        assert f"<h2>{title}</h2>" in page
    assert page.count('<img src="data:image/png;base64,') == len(FIGURE_NAMES)
    assert "http://" not in page and "https://" not in page
    assert [p.name for p in out.parent.iterdir()] == ["study.html"]  # no temporary left


def test_report_replaces_an_earlier_report(study_dir, tmp_path):
    out = tmp_path / "r.html"
    out.write_text("old")
    assert _run(["report", str(study_dir), "--out", str(out)])[0] == 0
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_help_names_the_inputs_and_defaults(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["report", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "FIT_OR_DIR" in text and "--out FILE" in text and "must end in .html" in text
    assert "(default: 0.94)" in text and "--no-progress" in text
    assert "self-contained HTML" in text


@pytest.mark.parametrize(("make", "out_name", "expect"), [
    (lambda d: (d / "runs.txt").write_text("x") and d / "runs.txt", "r.html",
     "runs.txt: not a fit file (.nc) or a study folder"),
    (lambda d: d / "missing.nc", "r.html", "missing.nc: not found"),
    (lambda d: d, "r.pdf", "r.pdf: the report must end in .html"),
    (lambda d: d / "empty", "r.html", "not a study folder"),
    (lambda d: (d / "bad.nc").write_bytes(b"not netcdf") and d / "bad.nc", "r.html",
     "bad.nc: not a readable netCDF fit file"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, make, out_name, expect):
    (tmp_path / "empty").mkdir()
    src = make(tmp_path)
    out = tmp_path / "out" / out_name
    rc, stdout, stderr = _run(["report", str(src), "--out", str(out), "--no-progress"])
    assert rc == 2
    assert stdout == ""
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("llmnas-transfer report: error: ") and expect in lines[0]
    assert not out.exists()
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_out_is_required_and_checked_by_argparse(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["report", str(tmp_path)])
    assert exc.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exc:
        main(["report", str(tmp_path), "--out", "r.html", "--ci", "1.5"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--ci" in err[0]
