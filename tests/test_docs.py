"""The man pages and completions in the repository match the current command definitions."""

import re
from pathlib import Path

from sam_edit.cli.docs import generate

ROOT = Path(__file__).resolve().parent.parent


def test_generated_docs_are_current(tmp_path):
    written = generate(tmp_path)
    assert written
    for path in written:
        committed = ROOT / path.relative_to(tmp_path)
        assert committed.is_file(), f"{committed} is missing; run `python -m sam_edit.cli.docs`"
        assert committed.read_text() == path.read_text(), f"{committed} is stale; run `python -m sam_edit.cli.docs`"
    stale = {p.name for p in (ROOT / "man").iterdir()} - {p.name for p in (tmp_path / "man").iterdir()}
    assert not stale, f"man pages of removed commands: {stale}"


def test_every_command_has_a_man_page(tmp_path):
    names = {path.name for path in generate(tmp_path)}
    for command in ("segment", "rank", "invert", "edit", "score", "doctor", "models-list", "models-pull"):
        assert f"samedit-{command}.1" in names


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r"^\$ (HF_HUB_OFFLINE=1 python -m pytest.*)$", readme, re.MULTILINE).group(1)
    assert command in ci.splitlines()
