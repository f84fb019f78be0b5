"""Releases: what goes to a worker host, built on the control machine.

A release is the project's wheel, its pinned dependencies and the handler
packages, as wheels for the hosts' Python (CPython 3.11, Linux, this
machine's architecture), bundled in one tar file. Its id hashes the source
trees and the pinned dependency set (the lock), never wheel bytes: wheel
builds are not byte-reproducible and an unpinned range drifts.

The lock (``name==version`` lines) is written on first use and reused; it is
re-resolved only when the declared requirements change (their hash is in the
lock's first line).
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email.parser import Parser as EmailParser
from pathlib import Path

from muzo_ops.errors import MuzoOpsError

HOST_PYTHON = "3.11"
HOST_ABI = "cp311"
GLIBC_TAGS = ("manylinux_2_36", "manylinux_2_34", "manylinux_2_28", "manylinux_2_17", "manylinux2014",
              "manylinux_2_12", "manylinux2010", "manylinux_2_5", "manylinux1")
SKIP_PARTS = frozenset({"__pycache__", ".git", ".mypy_cache", ".ruff_cache", ".pytest_cache", "build", "dist",
                        ".venv", "node_modules"})


class DeployError(MuzoOpsError):
    """A deploy input or build step that cannot be used (exit 2)."""


@dataclass(frozen=True)
class Release:
    """A built release: ``name`` (``<version>-<id>``) and its bundle on the control machine."""

    name: str
    version: str
    bundle: Path
    lock: Path

    @property
    def release_id(self) -> str:
        return self.name.rsplit("-", 1)[1]


def cache_dir() -> Path:
    base = os.environ.get("MUZO_DEPLOY_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "muzo-ops", "deploy")
    return Path(base)


def platform_tags() -> list[str]:
    machine = platform.machine() or "x86_64"
    return [f"{tag}_{machine}" for tag in GLIBC_TAGS] + [f"linux_{machine}"]


def project_root() -> Path | None:
    """The source checkout holding this muzo_ops, or None when it is installed from a wheel."""
    package = Path(__file__).resolve().parent.parent
    root = package.parent
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and re.search(r'(?m)^name\s*=\s*"muzo-ops"', pyproject.read_text()):
        return root
    return None


def tree_digest(paths: Iterable[Path], digest: hashlib._Hash) -> None:
    """Feed every file under ``paths`` (relative name and bytes, sorted) into ``digest``."""
    for top in paths:
        if top.is_file():
            files = [top]
            base = top.parent
        else:
            base = top
            files = sorted(p for p in top.rglob("*") if p.is_file()
                           and not SKIP_PARTS.intersection(p.relative_to(top).parts)
                           and p.suffix not in (".pyc", ".pyo"))
        for path in files:
            digest.update(path.relative_to(base).as_posix().encode() + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())


def _pip(args: Sequence[str], what: str) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise DeployError(f"pip could not {what}: {last}; check the package index and the requirement")


def _wheel_metadata(wheel: Path) -> tuple[str, str, list[str]]:
    """(name, version, Requires-Dist without extras markers) of a wheel file."""
    with zipfile.ZipFile(wheel) as archive:
        meta_name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        meta = EmailParser().parsestr(archive.read(meta_name).decode())
    requires = [r for r in meta.get_all("Requires-Dist") or [] if "extra ==" not in r]
    return str(meta["Name"]), str(meta["Version"]), sorted(requires)


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _build_local(source: Path, out: Path, *, ours: bool = False) -> Path:
    """A wheel of the project folder ``source`` (no dependencies) in ``out``.

    muzo_ops itself (``ours``) builds with the hatchling already installed
    when there is one; a handler package gets pip's isolated build
    environment, since its backend may be anything.
    """
    before = set(out.glob("*.whl"))
    isolation = ["--no-build-isolation"] if ours and _has_hatchling() else []
    _pip(["wheel", "--no-deps", *isolation, "-w", str(out), str(source)], f"build a wheel of {source}")
    made = sorted(set(out.glob("*.whl")) - before)
    if len(made) != 1:
        raise DeployError(f"building {source} made {len(made)} wheels, expected one")
    return made[0]


def _has_hatchling() -> bool:
    try:
        import hatchling  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
    except ImportError:
        return False
    return True


def _download_args(dest: Path) -> list[str]:
    args = ["download", "--only-binary=:all:", "--python-version", HOST_PYTHON, "--implementation", "cp",
            "--abi", HOST_ABI, "--abi", "abi3", "--abi", "none", "-d", str(dest)]
    for tag in platform_tags():
        args += ["--platform", tag]
    return args


def _declared_requirements(sources: Sequence[Path], wheels: Sequence[Path]) -> str | None:
    """A hash of what the project folders and wheels declare they need; None when not static."""
    requires: list[str] = []
    for source in sources:
        try:
            project = tomllib.loads((source / "pyproject.toml").read_text())["project"]
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return None
        if "dependencies" in project.get("dynamic", []):
            return None
        requires += [str(r) for r in project.get("dependencies", [])]
    for wheel in wheels:
        requires += _wheel_metadata(wheel)[2]
    return hashlib.sha256("\n".join(sorted(requires)).encode()).hexdigest()[:16]


def _release_name(version: str, root: Path | None, sources: Sequence[Path], wheels: Sequence[Path],
                  pins: Sequence[str]) -> str:
    digest = hashlib.sha256()
    if root is not None:
        tree_digest([root / "muzo_ops", root / "pyproject.toml", root / "templates", root / "deploy"], digest)
    else:
        for name, path in installed_files()[1]:
            if ".dist-info/" not in name or name.endswith("/METADATA"):
                digest.update(name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    for src in sources:
        tree_digest([src], digest)
    for wheel in wheels:
        digest.update(hashlib.sha256(wheel.read_bytes()).digest())
    digest.update(("\n".join(pins) + f"\n{HOST_ABI}\n" + " ".join(platform_tags())).encode())
    return f"{version}-{digest.hexdigest()[:12]}"


def build_release(handler_packages: Sequence[str] = (), lock_path: Path | None = None,
                  source: Path | None = None) -> Release:
    """Build (or find in the cache) the release for this source tree, lock and handler packages.

    With the lock in place and the release already bundled, nothing is built
    and pip is not run.
    """
    root = source.resolve() if source is not None else project_root()
    if source is not None and not (source / "pyproject.toml").is_file():
        raise DeployError(f"--source {source}: no pyproject.toml there; give a muzo_ops checkout")
    if root is None:  # an installed muzo-ops: the release carries the installed distribution
        return _build(None, handler_packages, lock_path)
    return _build(root, handler_packages, lock_path)


def installed_files() -> tuple[str, list[tuple[str, Path]]]:
    """(version, [(name in the wheel, file)]) of the installed muzo-ops distribution, byte code left out."""
    from importlib import metadata

    try:
        dist = metadata.distribution("muzo-ops")
    except metadata.PackageNotFoundError:
        raise DeployError("muzo-ops is neither a source checkout nor an installed distribution here; "
                          "pip install 'muzo-ops[deploy]' or give --source") from None
    found = []
    for entry in dist.files or []:
        name = entry.as_posix()
        if name.startswith(("..", "/")) or name.endswith((".pyc", ".pyo")) or "__pycache__" in name:
            continue
        if ".dist-info/" in name and name.rsplit("/", 1)[-1] in ("RECORD", "INSTALLER", "REQUESTED",
                                                                  "direct_url.json"):
            continue
        path = Path(str(entry.locate()))
        if path.is_file():
            found.append((name, path))
    if not any(n.startswith("muzo_ops/") for n, _ in found):
        raise DeployError("the installed muzo-ops lists no package files (an editable install?); "
                          "deploy with --source CHECKOUT")
    return str(dist.version), sorted(found)


def wheel_from_installed(out: Path) -> Path:
    """The installed muzo-ops, packed back into a wheel (same files, a fresh RECORD)."""
    import base64

    version, found = installed_files()
    dist_info = next(n.split("/", 1)[0] for n, _ in found if ".dist-info/" in n)
    wheel = out / f"muzo_ops-{version}-py3-none-any.whl"
    records = []
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, path in found:
            data = path.read_bytes()
            archive.writestr(name, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            records.append(f"{name},sha256={digest},{len(data)}")
        records.append(f"{dist_info}/RECORD,,")
        archive.writestr(f"{dist_info}/RECORD", "\n".join(records) + "\n")
    return wheel


def _build(root: Path | None, handler_packages: Sequence[str], lock_path: Path | None) -> Release:
    sources: list[Path] = []
    given: list[Path] = []
    for spec in handler_packages:
        path = Path(spec).expanduser().resolve()
        if path.is_dir() and (path / "pyproject.toml").is_file():
            sources.append(path)
        elif path.is_file() and path.suffix == ".whl":
            given.append(path)
        else:
            raise DeployError(f"handler package {spec}: not a wheel file or project folder; "
                              "give a .whl path or a folder with pyproject.toml")
    lock = (lock_path or Path("muzo-worker.lock")).resolve()
    if root is not None:
        version = str(tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"])
        project_sources = [root, *sources]
    else:
        version = installed_files()[0]
        project_sources = sources
    cache = cache_dir()
    declared = _declared_requirements(project_sources, given)
    if root is None and declared is not None:  # the installed distribution's own requirements too
        from importlib import metadata

        requires = sorted(r for r in metadata.requires("muzo-ops") or [] if "extra ==" not in r)
        declared = hashlib.sha256(f"{declared}\n{chr(10).join(requires)}".encode()).hexdigest()[:16]
    pins = _read_lock(lock, declared) if declared else None
    if pins is not None:
        name = _release_name(version, root, sources, given, pins)
        bundle = cache / "releases" / f"{name}.tar"
        if bundle.is_file():
            return Release(name, version, bundle, lock)
    staging = cache / "build"
    staging.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=staging) as tmp:
        work = Path(tmp)
        own = work / "own"
        own.mkdir()
        ours = _build_local(root, own, ours=True) if root is not None else wheel_from_installed(own)
        own_wheels = [ours, *(_build_local(src, own) for src in sources)]
        for wheel in given:
            shutil.copy2(wheel, own / wheel.name)
            own_wheels.append(own / wheel.name)
        metas = [_wheel_metadata(w) for w in own_wheels]
        own_names = {_normalize(m[0]) for m in metas}
        if declared is None:
            declared = hashlib.sha256("\n".join(sorted(r for m in metas for r in m[2])).encode()).hexdigest()[:16]
            pins = _read_lock(lock, declared)
        deps = work / "deps"
        deps.mkdir()
        if pins is None:
            _pip([*_download_args(deps), *map(str, own_wheels)], "resolve the dependencies for the hosts")
            for wheel in deps.glob("*.whl"):
                if _normalize(_wheel_metadata(wheel)[0]) in own_names:
                    wheel.unlink()
            pins = sorted(f"{_normalize(n)}=={v}" for n, v, _ in map(_wheel_metadata, deps.glob("*.whl")))
            _write_lock(lock, declared, pins)
        elif pins:
            _pip([*_download_args(deps), "--no-deps", *pins], "download the locked dependencies")
        name = _release_name(version, root, sources, given, pins)
        bundle = cache / "releases" / f"{name}.tar"
        bundle.parent.mkdir(parents=True, exist_ok=True)
        partial = bundle.with_name(f"{bundle.name}.tmp-{os.getpid()}")
        with tarfile.open(partial, "w") as tar:
            for wheel in [*own_wheels, *sorted(deps.glob("*.whl"))]:
                tar.add(wheel, arcname=f"wheels/{wheel.name}")
        partial.replace(bundle)
    return Release(name, version, bundle, lock)


def _read_lock(path: Path, declared: str) -> list[str] | None:
    """The pins of ``path`` when it locks the same declared requirements, else None."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return None
    if not lines or lines[0] != f"# muzo-ops worker lock; requirements {declared}":
        return None
    return sorted(line.strip() for line in lines[1:] if line.strip() and not line.startswith("#"))


def _write_lock(path: Path, declared: str, pins: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"# muzo-ops worker lock; requirements {declared}\n"
                   "# Pinned dependencies of the worker hosts, written by `muzo-ops deploy`; delete to re-resolve.\n"
                   + "".join(f"{pin}\n" for pin in pins))
    tmp.replace(path)
