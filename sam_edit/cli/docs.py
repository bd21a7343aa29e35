"""Generate the man pages and shell completions from the Typer app.

    python -m sam_edit.cli.docs [ROOT]

writes ROOT/man/*.1 and ROOT/completions/ (default ROOT: the current folder). A test
regenerates them and fails when the committed files are stale.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Explicit shell names for --show-completion instead of detecting the running shell;
# typer reads this when the app is built, so it is set before the import.
os.environ["_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION"] = "1"

import typer  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from sam_edit import __version__  # noqa: E402
from sam_edit.cli.app import app  # noqa: E402

COMPLETIONS = {"bash": "samedit.bash", "zsh": "_samedit", "fish": "samedit.fish"}
MAN_DATE = "2026"  # fixed so the generated files do not change with the day they are built


def roff(text: str) -> str:
    """Escape text for roff: backslashes, and dots or quotes that start a line."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line[:1] in (".", "'") else line for line in text.splitlines())


def option_lines(command) -> list[str]:
    """Roff `.TP` entries for each option, from the same help records `--help` prints."""
    context = typer.Context(command, info_name=command.name)
    lines = []
    for param in command.params:
        record = param.get_help_record(context) if param.param_type_name == "option" else None
        if record is None:
            continue
        names, help_text = record
        lines += [".TP", f"\\fB{roff(names)}\\fR", roff(help_text)]
    return lines


def man_page(name: str, command, path: list[str]) -> str:
    title = "-".join(path).upper()
    usage = " ".join(path) + " " + " ".join(
        f"\\fI{param.name.upper()}\\fR" for param in command.params if param.param_type_name == "argument"
    ) + " [\\fIOPTIONS\\fR]"
    summary = (command.help or "").strip().split("\n")[0]
    lines = [
        f'.TH "{title}" 1 "{MAN_DATE}" "samedit {__version__}" "samedit manual"',
        ".SH NAME",
        f"{'-'.join(path)} \\- {roff(summary)}",
        ".SH SYNOPSIS",
        usage,
        ".SH DESCRIPTION",
        ".nf",
        roff((command.help or "").strip()),
        ".fi",
    ]
    subcommands = getattr(command, "commands", {})
    if subcommands:
        lines.append(".SH COMMANDS")
        for sub_name, sub in sorted(subcommands.items()):
            lines += [".TP", f"\\fB{sub_name}\\fR", roff((sub.help or "").strip().split("\n")[0])]
    options = option_lines(command)
    if options:
        lines += [".SH OPTIONS"] + options
    lines += [".SH SEE ALSO", "samedit(1)"]
    return "\n".join(lines) + "\n"


def walk(command, path: list[str]):
    yield path, command
    for sub_name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from walk(sub, path + [sub_name])


def generate(root: Path) -> list[Path]:
    """Write every man page and completion script under `root`; return the paths written."""
    written = []
    (root / "man").mkdir(parents=True, exist_ok=True)
    (root / "completions").mkdir(parents=True, exist_ok=True)
    top = typer.main.get_command(app)
    for path, command in walk(top, ["samedit"]):
        target = root / "man" / ("-".join(path) + ".1")
        target.write_text(man_page(path[-1], command, path), encoding="utf-8")
        written.append(target)
    runner = CliRunner()
    for shell, filename in COMPLETIONS.items():
        result = runner.invoke(app, ["--show-completion", shell], prog_name="samedit")
        if result.exit_code != 0:
            raise RuntimeError(f"completion for {shell} failed: {result.output}")
        target = root / "completions" / filename
        target.write_text(result.stdout.strip() + "\n", encoding="utf-8")
        written.append(target)
    return written


if __name__ == "__main__":
    for written_path in generate(Path(sys.argv[1] if len(sys.argv) > 1 else ".")):
        print(written_path)
