import subprocess
import sys

from llmnas_transfer import cli


def test_version_and_help(capsys):
    assert cli.main([]) == 2
    out = capsys.readouterr().out
    assert "reproduce" in out or "COMMAND" in out


def test_unknown_command_exits_2_without_traceback():
    p = subprocess.run([sys.executable, "-m", "llmnas_transfer", "frobnicate"],
                       capture_output=True, text=True)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) <= 2
