"""A plain `pip install .` (no dev extra, not editable) into a fresh virtual environment works on its own: the
Dagster libraries import, the definitions load, and the migrations shipped inside the package run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
INSTALL_TIMEOUT = 3600  # resolving and downloading wheels on a loaded machine; pip's cache makes reruns quick


def _source_copy(target: Path) -> Path:
    """The working tree's files (tracked and new, not ignored) copied aside, so the build leaves no trace in the
    checkout; links are kept as links."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source, dest = REPO / name, target / name
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the working tree
        dest.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            dest.symlink_to(os.readlink(source))
        else:
            shutil.copy2(source, dest)
    return target


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_plain_pip_install_runs_migrations_from_the_package(tmp_path):
    source = _source_copy(tmp_path / "src")
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("EXPERIMENTTRACKER_", "DAGSTER_HOME", "VIRTUAL_ENV", "PYTHONPATH"))}
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path, env)
    python = venv / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "--quiet", str(source)], tmp_path, env, timeout=INSTALL_TIMEOUT)
    shutil.rmtree(source)  # what runs below can only come from the installed package

    work = tmp_path / "work"
    work.mkdir()
    env.update(EXPERIMENTTRACKER_DATA_DIR=str(work / "data"), EXPERIMENTTRACKER_DB_URL=f"sqlite:///{work / 'store.db'}")
    loaded = _run([str(python), "-c",
                   "import dagster_postgres, experimenttracker_pipeline.definitions as d\n"
                   "from experimenttracker_pipeline.store.migrations import migrations_dir\n"
                   "defs = d.build_definitions()\n"
                   "print(len(list(defs.resolve_all_job_defs())), migrations_dir())"], work, env)
    jobs, migrations = loaded.stdout.split()
    assert int(jobs) > 0 and Path(migrations).is_relative_to(venv)
    first = _run([str(venv / "bin" / "experimenttracker"), "migrate"], work, env)
    assert first.stdout.strip().startswith("applied: 0001_baseline")
    again = _run([str(venv / "bin" / "experimenttracker"), "migrate"], work, env)
    assert again.stdout.strip() == "applied: nothing (up to date)"
