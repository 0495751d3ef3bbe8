"""How much memory this process may still take on the host: ``MemAvailable`` and the limits of
the process's cgroups (a container's), read from ``/proc`` and ``/sys``, standard library only.

Training's memory check (:mod:`rsfusion.training.memory`), prediction's
(:mod:`rsfusion.inference.memory`) and the in-memory tile store (:mod:`rsfusion.data.tilestore`)
all read it here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_UNLIMITED = 2**60  # cgroup limits at or above this mean "no limit"


@dataclass(frozen=True)
class Budget:
    """Memory free (bytes) and where the number comes from."""

    bytes: int
    source: str


def cpu_budget(
    meminfo: Path = Path("/proc/meminfo"),
    mount: Path = Path("/sys/fs/cgroup"),
    cgroup: Path = Path("/proc/self/cgroup"),
) -> Budget | None:
    """The smaller of ``MemAvailable`` and what the process's cgroups leave (None: neither can
    be read, e.g. not Linux)."""
    found = []
    try:
        match = re.search(r"^MemAvailable:\s+(\d+) kB", meminfo.read_text(), re.MULTILINE)
    except OSError:
        match = None
    if match:
        found.append(Budget(int(match[1]) * 1024, "MemAvailable"))
    limited = cgroup_budget(mount, cgroup)
    if limited is not None:
        found.append(limited)
    return min(found, key=lambda b: b.bytes) if found else None


def cgroup_budget(mount: Path, cgroup: Path) -> Budget | None:
    """Memory left under the limits of the process's cgroup and its ancestors (v1 and v2):
    limit - usage + inactive file cache; None without a limit."""
    try:
        lines = cgroup.read_text().splitlines()
    except OSError:
        return None
    left: list[int] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # v2 (unified) hierarchy
            bases = [mount, mount / "unified"]
            names = ("memory.max", "memory.current", "inactive_file")
        elif "memory" in controllers.split(","):
            bases = [mount / "memory"]
            names = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
        else:
            continue
        rel = path.strip("/")
        for base in bases:
            for folder in _up_to(base / rel if rel else base, base):
                limit, usage = _read_int(folder / names[0]), _read_int(folder / names[1])
                if limit is None or usage is None or limit >= _UNLIMITED:
                    continue
                inactive = _stat(folder / "memory.stat", names[2])
                left.append(limit - usage + inactive)
    if not left:
        return None
    return Budget(max(min(left), 0), "the container's memory limit (cgroup)")


def _up_to(folder: Path, base: Path) -> Iterator[Path]:
    while True:
        yield folder
        if folder == base or folder == folder.parent:
            return
        folder = folder.parent


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # v2 "max": no limit


def _stat(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return 0


def host_available() -> int | None:
    """Bytes this process may still take on the host (:func:`cpu_budget`), None: unknown."""
    budget = cpu_budget()
    return None if budget is None else budget.bytes
