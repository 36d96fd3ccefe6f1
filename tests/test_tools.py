"""The tools a user runs first behave as their --help and headers say."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tools.bench import build_parser as bench_parser

ROOT = Path(__file__).resolve().parent.parent


def _run(*args, cwd, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_memd_bench_help_shows_every_default():
    parser = bench_parser()
    with_default = [a for a in parser._actions
                    if a.option_strings and a.default is not None and a.help != "==SUPPRESS=="
                    and a.dest != "help"]
    assert len(with_default) >= 12
    assert parser.format_help().count("(default:") >= len(with_default)


def test_fleet_outside_the_checkout_reads_the_compose_file_of_the_current_directory(tmp_path):
    (tmp_path / "docker-compose.yml").write_text("services:\n")
    done = _run("-c", "import tools.fleet as f; print(f.DEFAULT_COMPOSE.resolve())", cwd=tmp_path)
    assert done.stdout.strip() == str((tmp_path / "docker-compose.yml").resolve())


def test_fleet_up_without_a_compose_file_says_so_in_one_line(tmp_path):
    done = _run("-m", "tools.fleet", "--state", str(tmp_path / "state.json"), "up",
                "--compose", str(tmp_path / "none.yml"), cwd=tmp_path)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "--compose" in done.stderr


def test_storage_bench_header_tells_the_sizes_used_and_shows_progress(tmp_path):
    done = _run("-m", "tools.storage_bench", "--items", "3000", "--lookup-sizes", "3000",
                "--fill", "2000", "--runs", "1", "--seconds", "0.05", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    header = done.stdout.splitlines()[0]
    assert "over 3000 items" in header and "fills 2000 items" in header
    assert "1000000" not in done.stdout
    progress = [line for line in done.stderr.splitlines() if re.search(r"run 1/1", line)]
    assert len(progress) == 3


def test_fuzz_leaves_nothing_in_the_working_directory(tmp_path):
    done = _run("-m", "tools.fuzz", "--seconds", "1", "--target", "text", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert list(tmp_path.iterdir()) == []
    out = re.search(r"crashes and corpora go to (\S+)", done.stdout).group(1)
    assert os.path.isdir(out) and not out.startswith(str(tmp_path))
    shutil.rmtree(out)
