"""The project's promises to a newcomer: README's commands are CI's, and every option is documented."""

import re
from pathlib import Path

from mongol.cli.serve import build_parser

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.rst").read_text()


def readme_commands() -> list[str]:
    return [m.group(1).strip() for m in re.finditer(r"\.\. code-block:: sh\n\n    (.+)\n", README)]


def test_ci_runs_readme_setup_and_test_commands_verbatim():
    setup, run, test = readme_commands()[:3]
    assert run == "pip install . && mongol-serve"
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert ci[ci.index("# README: set up") + 1] == setup
    assert ci[ci.index("# README: test it") + 1] == test


def test_every_serve_option_is_in_readme():
    for action in build_parser()._actions:
        for flag in action.option_strings:
            if flag not in ("-h", "--help", "--version"):
                assert f"``{flag}" in README, f"{flag} is not documented in README.rst"
