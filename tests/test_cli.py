"""The command line: help, doctor, and user errors without tracebacks."""

import json
import subprocess
import sys

from mstoolkit.cli import build_parser, main


def test_every_command_has_help():
    parser = build_parser()
    text = parser.format_help()
    for command in ("doctor", "data", "notebooks", "preprocess", "train", "segment", "evaluate"):
        assert command in text


def test_doctor_json(capsys):
    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["platform"] in {"local", "colab", "binder"}
    assert report["packages"]["torch"] and report["packages"]["monai"]
    assert report["device"]


def test_console_script_version():
    out = subprocess.run([sys.executable, "-m", "mstoolkit.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("mstoolkit ")


def test_unknown_option_lists_choices(capsys):
    try:
        main(["evaluate", "--matching", "nope"])
    except SystemExit as exit_:
        assert exit_.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'nope'" in err and "any_overlap" in err
