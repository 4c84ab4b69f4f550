"""Every command line command that acts takes --json and prints what it did (issue 24)."""

from __future__ import annotations

import argparse
import json

from core.cli import build_parser, main

# commands without --json, and why
NO_JSON = {
    "validate": "prints the validated parameters as JSON always",
    "worker": "started by the job queue, not typed; its output is the job's log",
    "serve": "runs the HTTP server until stopped",
}


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """(command words, option strings) of every command that runs (a parser without subcommands of its own, or a
    group that runs a default action, as `jobs` lists)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    runs = not subs or (parser.get_default("func") is not None and not any(a.required for a in subs))
    if prefix and runs:
        yield " ".join(prefix), {o for a in parser._actions for o in a.option_strings}
    for group in subs:
        for name, sub in group.choices.items():
            yield from _commands(sub, (*prefix, name))


def test_every_command_takes_json():
    commands = dict(_commands(build_parser()))
    assert {"dataset delete", "dataset export", "dataset split", "export", "index export", "share"} <= set(commands)
    missing = sorted(c for c, opts in commands.items() if "--json" not in opts and c not in NO_JSON)
    assert not missing, f"commands without --json: {missing}"
    assert set(NO_JSON) <= set(commands), sorted(set(NO_JSON) - set(commands))  # no stale exemptions


def test_dataset_commands_print_what_they_did(small_folder, tmp_path, capsys):
    def run(*args: str):
        assert main([*args, "--json"]) == 0, capsys.readouterr().err
        return json.loads(capsys.readouterr().out)

    assert run("dataset", "import", str(small_folder), "--name", "d")["items"] == 18
    split = run("dataset", "split", "d", "--val-fraction", "0.5", "--seed", "3")
    assert split["dataset"] == "d" and split["seed"] == 3 and split["splits"]["val"] == 9
    assert sum(split["splits"].values()) == 18
    exported = run("dataset", "export", "d", "--format", "csv", "--out", str(tmp_path / "d.zip"))
    assert exported == {"dataset": "d", "format": "csv", "path": str(tmp_path / "d.zip"),
                        "bytes": (tmp_path / "d.zip").stat().st_size}
    assert run("share", "dataset", "d") == {"shared": "dataset", "name": "d", "visibility": "team"}
    deleted = run("dataset", "delete", "d")
    assert deleted["deleted"] == "dataset" and deleted["name"] == "d" and deleted["items"] == 18
    assert main(["dataset", "show", "d"]) == 2
    # without --json: the same facts as a line
    assert main(["dataset", "import", str(small_folder), "--name", "e"]) == 0
    capsys.readouterr()
    assert main(["dataset", "delete", "e"]) == 0
    assert capsys.readouterr().out == "Deleted dataset 'e' (18 images)\n"

