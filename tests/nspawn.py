"""Real systemd hosts for the deploy tests: Debian bookworm booted with systemd-nspawn.

One minimal rootfs is built with debootstrap and cached under
/var/cache/muzo-ops-test/, keyed by a hash of its recipe (built once, reused by
every later run). Each ``NspawnHost`` boots it with ``--volatile=overlay`` (a
throwaway copy per boot), sshd on its own 127.0.0.1 port, and is stopped by
SIGTERM to its PID. The Debian mirror comes from this machine's apt sources.

    python tests/nspawn.py build      # build (or find) the cached rootfs
    python tests/nspawn.py boot NAME  # boot one host, print its ssh line, Ctrl-C stops it
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.servers import free_port

CACHE = Path(os.environ.get("MUZO_TEST_NSPAWN_CACHE", "/var/cache/muzo-ops-test"))
PACKAGES = ("systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "python3-venv",
            "iproute2", "procps")
RECIPE = {
    "suite": "bookworm",
    "variant": "minbase",
    "include": list(PACKAGES),
    # Bump when the steps in ``_customize`` change.
    "customize": 2,
}


def recipe_key() -> str:
    return hashlib.sha256(json.dumps(RECIPE, sort_keys=True).encode()).hexdigest()[:16]


def rootfs_path() -> Path:
    return CACHE / f"rootfs-{RECIPE['suite']}-{recipe_key()}"


def client_key() -> Path:
    """The SSH private key that logs in as root on every host (lives beside the rootfs)."""
    return CACHE / f"client-{recipe_key()}" / "id_ed25519"


def known_hosts() -> Path:
    return CACHE / f"client-{recipe_key()}" / "known_hosts_keys"


def debian_mirror() -> str:
    """The Debian mirror this machine's own apt sources use for the suite."""
    candidates: list[str] = []
    sources = Path("/etc/apt")
    files = [sources / "sources.list", *sorted((sources / "sources.list.d").glob("*"))]
    for path in files:
        if not path.is_file() or path.name.endswith((".disabled", ".save")) or "disabled" in path.name:
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(
                    (m.group(1).lower(), m.group(2).strip())
                    for m in re.finditer(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.M)
                )
                suites = fields.get("suites", "").split()
                if RECIPE["suite"] in suites and "deb" in fields.get("types", "").split():
                    candidates += fields.get("uris", "").split()
        else:
            for line in text.splitlines():
                parts = re.sub(r"\[[^]]*\]", "", line).split()
                if len(parts) >= 3 and parts[0] == "deb" and parts[2] == RECIPE["suite"]:
                    candidates.append(parts[1])
    for uri in candidates:
        if "security" not in uri and uri.startswith(("http://", "https://")):
            return uri
    raise RuntimeError(f"no apt source for Debian {RECIPE['suite']} in /etc/apt/sources.list*")


def nspawn_unavailable() -> str | None:
    """Why this machine cannot boot nspawn hosts, or None when it can."""
    if os.geteuid() != 0:
        return "systemd-nspawn hosts need root"
    for tool in ("systemd-nspawn", "debootstrap", "ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return (f"{tool} is not installed (apt-get install -y debootstrap systemd-container "
                    "openssh-client)")
    if not Path("/sys/fs/cgroup").is_dir():
        return "no cgroup file system at /sys/fs/cgroup for systemd-nspawn"
    return None


def _chroot(root: Path, *cmd: str) -> None:
    subprocess.run(["chroot", str(root), *cmd], check=True, stdout=subprocess.DEVNULL,
                   env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"})


def _customize(root: Path, key: Path) -> None:
    """Host keys once (stable known_hosts), root's authorized key, quiet boot."""
    for old in (root / "etc/ssh").glob("ssh_host_*"):
        old.unlink()
    _chroot(root, "ssh-keygen", "-A")
    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text(Path(f"{key}.pub").read_text())
    (ssh_dir / "authorized_keys").chmod(0o600)
    conf = root / "etc/ssh/sshd_config.d"
    conf.mkdir(exist_ok=True)
    (conf / "00-muzo-test.conf").write_text(
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
        "UseDNS no\nMaxStartups 100\nMaxSessions 100\n")
    # sshd reads this file at boot; each host bind-mounts its own (port and address).
    (conf / "10-port.conf").write_text("")
    (root / "etc/hostname").write_text("muzo-host\n")
    # Units a throwaway test host does not need (faster boots).
    for unit in ("systemd-timesyncd.service", "apt-daily.timer", "apt-daily-upgrade.timer",
                 "e2scrub_all.timer", "fstrim.timer", "systemd-tmpfiles-clean.timer", "getty@tty1.service",
                 "console-getty.service", "man-db.timer"):
        link = root / "etc/systemd/system" / unit
        if not link.exists():
            link.symlink_to("/dev/null")
    # Keys as ``HOST KEY`` lines, turned into known_hosts entries per port by ``NspawnHost``.
    keys = sorted((root / "etc/ssh").glob("ssh_host_*_key.pub"))
    known_hosts().write_text("".join(" ".join(p.read_text().split()[:2]) + "\n" for p in keys))


def build_rootfs(log: Path | None = None) -> Path:
    """The cached rootfs for ``RECIPE``; builds it (60-90 s) only when absent."""
    target = rootfs_path()
    if (target / ".muzo-complete").exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / ".muzo-complete").exists():
            return target
        key = client_key()
        key.parent.mkdir(parents=True, exist_ok=True)
        if not key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "muzo-test", "-f", str(key)],
                           check=True)
        work = CACHE / f"{target.name}.tmp-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        cmd = ["debootstrap", f"--variant={RECIPE['variant']}", "--include=" + ",".join(PACKAGES),
               str(RECIPE["suite"]), str(work), debian_mirror()]
        out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
        try:
            subprocess.run(cmd, check=True, stdout=out, stderr=subprocess.STDOUT)
        finally:
            if log:
                out.close()  # type: ignore[union-attr]
        _customize(work, key)
        (work / ".muzo-complete").write_text(json.dumps(RECIPE) + "\n")
        shutil.rmtree(target, ignore_errors=True)
        work.rename(target)
    return target



@dataclass
class NspawnHost:
    """One booted container: ``root@127.0.0.1:ssh_port`` with the cached client key."""

    name: str
    workdir: Path
    ssh_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def known_hosts_file(self) -> Path:
        return self.workdir / f"known_hosts-{self.name}"

    @property
    def log(self) -> Path:
        return self.workdir / f"nspawn-{self.name}.log"

    def inventory_data(self) -> dict[str, object]:
        return {
            "ssh_hostname": "127.0.0.1", "ssh_port": self.ssh_port, "ssh_user": "root",
            "ssh_key": str(client_key()), "ssh_known_hosts_file": str(self.known_hosts_file),
            "ssh_strict_host_key_checking": "yes",
        }

    def boot(self, timeout: float = 60.0) -> None:
        root = build_rootfs()
        self.workdir.mkdir(parents=True, exist_ok=True)
        port_conf = self.workdir / f"sshd-{self.name}.conf"
        port_conf.write_text(f"Port {self.ssh_port}\nListenAddress 127.0.0.1\n")
        entries = "".join(f"[127.0.0.1]:{self.ssh_port} {line}\n"
                          for line in known_hosts().read_text().splitlines() if line)
        self.known_hosts_file.write_text(entries)
        # Each host its own /etc/machine-id (the cached rootfs has one; the deploy tells machines apart by it).
        machine_id = self.workdir / f"machine-id-{self.name}"
        machine_id.write_text(hashlib.sha256(f"{self.name}:{self.ssh_port}:{os.getpid()}".encode()).hexdigest()[:32]
                              + "\n")
        cmd = ["systemd-nspawn", "-D", str(root), "-M", self.name, "--register=no", "--keep-unit",
               "--volatile=overlay", "--console=read-only", "--quiet",
               f"--bind-ro={port_conf}:/etc/ssh/sshd_config.d/10-port.conf",
               f"--bind-ro={machine_id}:/etc/machine-id", "-b"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"systemd-nspawn for {self.name} exited with {self.proc.returncode}: "
                                   f"{self.log.read_text(errors='replace')[-2000:]}")
            if self.ssh("true", check=False, timeout=5).returncode == 0:
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"host {self.name} did not answer ssh on port {self.ssh_port} within {timeout}s")

    def ssh(self, command: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``command`` as root on the host; output captured."""
        cmd = ["ssh", "-p", str(self.ssh_port), "-i", str(client_key()), "-o", "BatchMode=yes",
               "-o", f"UserKnownHostsFile={self.known_hosts_file}", "-o", "StrictHostKeyChecking=yes",
               "-o", "ConnectTimeout=3", "-o", "LogLevel=ERROR", "root@127.0.0.1", command]
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            if check:
                raise
            return subprocess.CompletedProcess(cmd, 255, "", "timeout")
        if check and result.returncode != 0:
            raise RuntimeError(f"ssh {self.name} {command!r} exited {result.returncode}: {result.stderr.strip()}")
        return result

    def inside(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``command`` as root in the host without SSH (nsenter into its init): for when sshd is down."""
        assert self.proc is not None
        init = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True,
                              text=True).stdout.split()
        assert init, f"no init process under systemd-nspawn {self.proc.pid}"
        return subprocess.run(["nsenter", "-t", init[0], "-m", "-u", "-i", "-n", "-p", "--", "/bin/sh", "-c",
                               command], capture_output=True, text=True, timeout=timeout, check=True)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to systemd-nspawn (an orderly shutdown of the container), SIGKILL after ``timeout``."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@contextlib.contextmanager
def booted_hosts(prefix: str, work: Path, count: int = 2) -> Iterator[list[NspawnHost]]:
    """``count`` booted hosts named ``<prefix><pid>-<n>``, all stopped on the way out."""
    booted: list[NspawnHost] = []
    try:
        for index in range(1, count + 1):
            host = NspawnHost(f"{prefix}{os.getpid() % 10000}-{index}", work)
            booted.append(host)
            host.boot()
        yield booted
    finally:
        for host in booted:
            host.stop()


def main(argv: list[str]) -> int:
    if argv[:1] == ["build"]:
        print(build_rootfs(Path("/tmp/muzo-nspawn-build.log")))
        return 0
    if argv[:1] == ["boot"] and len(argv) == 2:
        host = NspawnHost(argv[1], Path("/tmp/muzo-nspawn"))
        host.boot()
        print(f"ssh -p {host.ssh_port} -i {client_key()} -o UserKnownHostsFile={host.known_hosts_file} "
              "root@127.0.0.1")
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
        finally:
            host.stop()
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


def module_hosts(prefix: str, folder: str) -> Callable[..., Iterator[list[NspawnHost]]]:
    """A module-scoped ``hosts`` fixture: two booted hosts ``<prefix><pid>-<n>`` with their work in ``folder``."""

    @pytest.fixture(scope="module")
    def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NspawnHost]]:
        build_rootfs()
        with booted_hosts(prefix, tmp_path_factory.mktemp(folder)) as booted:
            yield booted

    return hosts
