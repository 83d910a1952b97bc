"""Every command of README.md's "Everyday commands" block, run as written, in order, in a fresh folder.

The block is parsed from README.md, so the test breaks when the README drifts from what works. ``<stamp>`` is
the run folder the commands before it made; ``tensorboard`` is started and stopped once it serves.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, run_cli, run_dirs, shell_commands

CONSOLE_SCRIPTS = {"genexp-train": "genexp.train", "genexp-eval": "genexp.evaluate"}


def everyday_commands(readme: Path = REPO / "README.md") -> list[str]:
    """The command lines of the first ``bash`` block under the "Everyday commands" heading, comments dropped."""
    text = readme.read_text(encoding="utf-8")
    section = text.split("## Everyday commands", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README.md: no ```bash block under 'Everyday commands'"
    return shell_commands(block.group(1))


def test_readme_block_is_parsed() -> None:
    commands = everyday_commands()
    assert commands[0].startswith("genexp-train ") and any(c.startswith("tensorboard") for c in commands)
    assert all(shlex.split(c)[0] in (*CONSOLE_SCRIPTS, "tensorboard") for c in commands)


@pytest.mark.slow
def test_every_everyday_command_works_as_written(tmp_path: Path) -> None:
    for command in everyday_commands():
        args = shlex.split(command)
        if "<stamp>" in command:  # the newest single run the commands before made
            stamp = sorted((tmp_path / "outputs" / "train" / "runs").iterdir())[-1].name
            args = [a.replace("<stamp>", stamp) for a in args]
        if args[0] == "tensorboard":
            _serves(args, tmp_path)
            continue
        result = run_cli(args[1:], cwd=tmp_path, module=CONSOLE_SCRIPTS[args[0]], timeout=600)
        assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}"
        _check(args, result, tmp_path)


def _check(args: list[str], result: subprocess.CompletedProcess, root: Path) -> None:
    """What each kind of command promises beyond exit status 0."""
    if "--help" in args:
        assert "optimizer: " in result.stdout and "model: " in result.stdout
    elif "--cfg" in args:
        assert "optimizer:" in result.stdout and "_target_" in result.stdout
    elif args[0] == "genexp-eval":
        assert (sorted((root / "outputs" / "eval" / "runs").iterdir())[-1] / "report.json").is_file()
    else:
        newest = max(run_dirs(root), key=lambda p: p.stat().st_mtime)
        metrics = json.loads((newest / "metrics.json").read_text())
        assert all(v == v for k, v in metrics.items() if k.startswith(("val/", "test/"))), metrics  # no NaN
        if "-m" in args:
            jobs = [d for d in run_dirs(root) if "multiruns" in d.parts]
            assert len(jobs) == 6 and all((d / "metrics.json").is_file() for d in jobs)


def _serves(args: list[str], cwd: Path, wait_s: float = 60) -> None:
    """Start TensorBoard as written; it must announce its address (then it is stopped)."""
    command = [sys.executable, "-m", "tensorboard.main", *args[1:]]
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, seen = time.monotonic() + wait_s, ""
        assert process.stdout is not None
        while time.monotonic() < deadline and process.poll() is None:
            line = process.stdout.readline()
            seen += line
            if "http://" in line:
                return
        pytest.fail(f"{' '.join(args)} did not serve: {seen[-2000:]}")
    finally:
        process.terminate()
        process.wait(timeout=30)
