"""What produced a result: the versions of Python and of the libraries a run's numbers depend on, purejaxmt's git
commit (and whether the checkout had uncommitted changes), the devices and the XLA flags.

`record()` is saved under `"provenance"` in a run's config.json (and a study's index): a resume compares it with the
record of the resuming process, and differing versions are a warning, not a refusal (the run is still the same
config; its numbers may not be comparable across the change, which is what the warning says).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

import jax

KEY = "provenance"  # the config record's key (rundir.check_resumable leaves it out of the config comparison)
# Distribution names as pip has them: the libraries a result depends on.
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "mujoco", "mujoco-mjx", "playground", "gymnax",
            "brax", "numpy", "purejaxmt")


def package_version(name: str) -> str | None:
    """The installed version of distribution `name`, or None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit(directory: Path | None = None) -> dict:
    """`{"commit": sha, "dirty": bool}` of the git checkout holding `directory` (purejaxmt's source by default), or
    `{"commit": None, "why": ...}` when git is absent or the source is not a checkout (an installed wheel)."""
    directory = Path(directory) if directory is not None else Path(__file__).resolve().parents[2]

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(directory), *args], capture_output=True, text=True, check=True,
                              timeout=20).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except FileNotFoundError:
        return {"commit": None, "why": "git is not installed"}
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        return {"commit": None, "why": f"{directory} is not a git checkout ({type(error).__name__})"}
    return {"commit": commit, "dirty": dirty}


def record() -> dict:
    """The provenance of a run started now, in this process (JSON-ready)."""
    devices = jax.devices()
    return {"python": platform.python_version(),
            "packages": {name: package_version(name) for name in PACKAGES},
            "git": git_commit(),
            "devices": {"kind": devices[0].device_kind, "platform": devices[0].platform, "count": len(devices),
                        "processes": jax.process_count()},
            "xla_flags": os.environ.get("XLA_FLAGS", "")}


def version_changes(saved: dict | None, current: dict) -> list[str]:
    """`name: saved -> now` for Python and each package whose version differs (empty when they agree, or when the
    saved record has no provenance: a run from before it was recorded)."""
    if not saved:
        return []
    changes = []
    if saved.get("python") != current.get("python"):
        changes.append(f"python {saved.get('python')} -> {current.get('python')}")
    saved_packages, packages = saved.get("packages", {}), current.get("packages", {})
    for name in sorted(set(saved_packages) | set(packages)):
        if saved_packages.get(name) != packages.get(name):
            changes.append(f"{name} {saved_packages.get(name)} -> {packages.get(name)}")
    return changes


def resume_warning(saved_config: dict, current: dict) -> str | None:
    """One warning line when a run saved with `saved_config` is resumed under other versions, else None."""
    changes = version_changes(saved_config.get(KEY), current)
    if not changes:
        return None
    return ("[purejaxmt] WARNING: resuming under other versions than the run started with: " + ", ".join(changes)
            + "; the rest of the run may not be comparable with its start")
