"""The wheels scripts/gpu_smoke.sh carries to a GPU machine without internet.

    python3 scripts/gpu_smoke_carry.py plan [--wheels-dir .whl] [--offline]   # here, with PyPI
    python3 scripts/gpu_smoke_carry.py satisfied                              # there, before
    python3 scripts/gpu_smoke_carry.py check                                  # there, after

``plan`` downloads what is missing of the carry set (scripts/gpu_smoke_wheels.txt) into the
wheels folder with ``--no-deps`` for CPython 3.12 on manylinux_2_28 x86-64 (building the
sdist-only packages with ``pip wheel --no-deps``), refuses anything in that folder that is not
in the manifest (two versions of one package stop the install; a torch or NVIDIA wheel would
replace the machine's CUDA build), prints every wheel with its size, the working tree that
travels with them, the total, and fails when the total is over the 64 MiB a device call carries.
``satisfied`` says whether the running Python already meets every requirement of the manifest
(then nothing is installed); ``check`` verifies after the install that it does and that every
carried package's own requirements are met by what the machine has.

Standard library only (plus the ``packaging`` that every pip vendors), so that it runs with any
Python 3.10+ here and with the machine's Python there.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

try:
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version
except ImportError:  # pip always vendors it
    from pip._vendor.packaging.markers import default_environment  # type: ignore[no-redef,assignment]
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef,assignment]
    from pip._vendor.packaging.specifiers import SpecifierSet  # type: ignore[no-redef,assignment]
    from pip._vendor.packaging.version import InvalidVersion, Version  # type: ignore[no-redef,assignment]

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "scripts" / "gpu_smoke_wheels.txt"
MIB = 1024 * 1024
LIMIT_MIB = 64  # what one device call carries: the working tree and the carried paths together
TARGET_PYTHON = (3, 12)
TARGET_ARCH = "x86_64"
MAX_GLIBC = (2, 28)  # manylinux_2_28: megatron-core's wheel; the machine's glibc is at least that
# The machine's own GPU stack and numerics: never carried (they would replace its CUDA build).
FORBIDDEN = re.compile(r"^(torch|torchvision|torchaudio|triton|pytorch-triton.*|numpy|nvidia-.*|cuda-.*|cupy.*)$")
# pip download matches --platform tags exactly: every manylinux tag up to MAX_GLIBC a wheel may carry
PLATFORMS = [f"manylinux_2_{n}_{TARGET_ARCH}" for n in range(MAX_GLIBC[1], 16, -1)] + [
    f"manylinux2014_{TARGET_ARCH}",
    f"manylinux2010_{TARGET_ARCH}",
    f"manylinux1_{TARGET_ARCH}",
]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Entry:
    name: str  # canonical
    version: str  # what is downloaded
    need: str  # requirement string the GPU run has, e.g. "transformers>=5.20,<6"
    sdist: bool  # no wheel on PyPI: built here

    @property
    def pin(self) -> str:
        return f"{self.name}=={self.version}"


def read_manifest(path: Path = MANIFEST) -> list[Entry]:
    entries = []
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) not in (2, 3) or "==" not in fields[0] or (len(fields) == 3 and fields[2] != "sdist"):
            raise ValueError(f"{path}:{lineno}: expected '<name>==<version> <requirement> [sdist]', got {raw!r}")
        name, version = fields[0].split("==", 1)
        need = Requirement(fields[1])
        if canonical(need.name) != canonical(name):
            raise ValueError(f"{path}:{lineno}: requirement {fields[1]!r} is not about {name}")
        if not need.specifier.contains(version, prereleases=True):
            raise ValueError(f"{path}:{lineno}: {name}=={version} does not meet its own requirement {fields[1]}")
        if FORBIDDEN.match(canonical(name)):
            raise ValueError(f"{path}:{lineno}: {name} is the machine's own and must not be carried")
        entries.append(Entry(canonical(name), version, fields[1], len(fields) == 3))
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: a package is listed twice")
    return entries


# --------------------------------------------------------------------------- wheel file names


def parse_wheel_name(filename: str) -> tuple[str, str, list[tuple[str, str, str]]]:
    """(canonical name, version, expanded (python, abi, platform) tags) of a wheel's file name."""
    if not filename.endswith(".whl"):
        raise ValueError(f"not a wheel: {filename}")
    parts = filename[: -len(".whl")].split("-")
    if len(parts) not in (5, 6):
        raise ValueError(f"not a wheel file name: {filename}")
    name, version, py, abi, plat = parts[0], parts[1], parts[-3], parts[-2], parts[-1]
    tags = [(p, a, pl) for p in py.split(".") for a in abi.split(".") for pl in plat.split(".")]
    return canonical(name), version, tags


def _platform_glibc(plat: str) -> tuple[int, int] | None:
    """The glibc a Linux platform tag needs; None if it is not a manylinux tag for TARGET_ARCH."""
    legacy = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
    legacy_match = re.fullmatch(rf"(manylinux1|manylinux2010|manylinux2014)_{TARGET_ARCH}", plat)
    if legacy_match:
        return legacy[legacy_match.group(1)]
    m = re.fullmatch(rf"manylinux_(\d+)_(\d+)_{TARGET_ARCH}", plat)
    return (int(m.group(1)), int(m.group(2))) if m else None


def tag_ok(py: str, abi: str, plat: str, max_glibc: tuple[int, int] = MAX_GLIBC) -> bool:
    """Whether CPython TARGET_PYTHON on manylinux (glibc >= max_glibc) TARGET_ARCH installs this tag."""
    major, minor = TARGET_PYTHON
    if plat != "any":
        glibc = _platform_glibc(plat)
        if glibc is None or glibc > max_glibc:
            return False
    if abi == "none":
        return py in (f"py{major}", f"py{major}{minor}", f"cp{major}{minor}")
    if abi == f"cp{major}{minor}":
        return py == f"cp{major}{minor}"
    if abi == "abi3":
        m = re.fullmatch(rf"cp{major}(\d+)", py)
        return m is not None and int(m.group(1)) <= minor
    return False


@dataclass
class Scan:
    found: list[tuple[Entry, Path, int]]
    problems: list[str]
    missing: list[Entry]


def scan(wheels_dir: Path, entries: list[Entry], max_glibc: tuple[int, int] = MAX_GLIBC) -> Scan:
    by_name = {e.name: e for e in entries}
    found: dict[str, tuple[Entry, Path, int]] = {}
    problems = []
    files = sorted(wheels_dir.iterdir()) if wheels_dir.is_dir() else []
    for path in files:
        if path.is_dir() or path.name.startswith("."):
            continue
        try:
            name, version, tags = parse_wheel_name(path.name)
        except ValueError as e:
            problems.append(f"{path.name}: {e} (only the manifest's wheels belong in {wheels_dir})")
            continue
        if FORBIDDEN.match(name):
            problems.append(f"{path.name}: {name} is the machine's own; carrying it would replace it")
            continue
        entry = by_name.get(name)
        if entry is None:
            problems.append(f"{path.name}: {name} is not in the carry set ({MANIFEST.name}); remove it")
            continue
        if Version(version) != Version(entry.version):
            problems.append(f"{path.name}: version {version}, the manifest wants {entry.pin}")
            continue
        if not any(tag_ok(*t, max_glibc=max_glibc) for t in tags):
            problems.append(
                f"{path.name}: no tag installs on CPython {TARGET_PYTHON[0]}.{TARGET_PYTHON[1]} "
                f"manylinux_{max_glibc[0]}_{max_glibc[1]}_{TARGET_ARCH}"
            )
            continue
        if name in found:
            problems.append(f"{path.name}: a second wheel of {name} (besides {found[name][1].name}); keep one")
            continue
        found[name] = (entry, path, path.stat().st_size)
    missing = [e for e in entries if e.name not in found]
    return Scan([found[e.name] for e in entries if e.name in found], problems, missing)


# --------------------------------------------------------------------------- downloading


def pip_download_cmd(entry: Entry, wheels_dir: Path, python: str = sys.executable) -> list[str]:
    if entry.sdist:  # no wheel on PyPI: build one (pure Python) from the sdist
        return [python, "-m", "pip", "wheel", "--no-deps", "--no-binary", entry.name, "-w", str(wheels_dir), entry.pin]
    major, minor = TARGET_PYTHON
    cmd = [python, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(wheels_dir)]
    cmd += ["--python-version", f"{major}.{minor}", "--implementation", "cp"]
    cmd += ["--abi", f"cp{major}{minor}", "--abi", "abi3", "--abi", "none"]
    for plat in PLATFORMS:
        cmd += ["--platform", plat]
    return [*cmd, entry.pin]


def download(missing: list[Entry], wheels_dir: Path) -> None:
    wheels_dir.mkdir(parents=True, exist_ok=True)
    for entry in missing:
        cmd = pip_download_cmd(entry, wheels_dir)
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)


# --------------------------------------------------------------------------- what travels


def tree_bytes(root: Path, exclude: Path | None) -> int | None:
    """Bytes of the working tree a device call sends (tracked and untracked-not-ignored files,
    and shared/); None outside a git checkout. Files under ``exclude`` are not counted."""
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z", "-co", "--exclude-standard"],
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    paths = [root / p for p in out.decode(errors="surrogateescape").split("\0") if p]
    shared = root / "shared"
    if shared.is_dir():
        paths += [Path(d) / f for d, _, fs in os.walk(shared) for f in fs]
    exclude = exclude.resolve() if exclude is not None else None
    total = 0
    for p in set(paths):
        try:
            if exclude is not None and p.resolve().is_relative_to(exclude):
                continue
            total += p.lstat().st_size
        except OSError:  # deleted since git listed it
            continue
    return total


def cmd_plan(args: argparse.Namespace) -> int:
    entries = read_manifest(args.manifest)
    wheels_dir = args.wheels_dir
    result = scan(wheels_dir, entries)
    if result.missing and not args.offline and not result.problems:
        download(result.missing, wheels_dir)
        result = scan(wheels_dir, entries)
    print(f"carry set ({args.manifest.name}: {len(entries)} packages, --no-deps) in {wheels_dir}/:")
    for entry, path, size in result.found:
        print(
            f"  {path.name:<82} {size / MIB:8.2f} MiB  {size:>11,} B{'  (built from the sdist)' if entry.sdist else ''}"
        )
    wheels = sum(size for _, _, size in result.found)
    print(f"  {'wheels':<82} {wheels / MIB:8.2f} MiB  {wheels:>11,} B")
    bad = False
    for problem in result.problems:
        print(f"error: {problem}", file=sys.stderr)
        bad = True
    for entry in result.missing:
        how = "pip wheel --no-deps" if entry.sdist else "pip download --no-deps"
        print(f"error: missing {entry.pin} in {wheels_dir}/ (run without --offline, or {how} it)", file=sys.stderr)
        bad = True
    tree = None if args.no_tree else tree_bytes(ROOT, wheels_dir)
    total = wheels + (tree or 0)
    if tree is not None:
        print(f"  {'working tree that travels with them':<82} {tree / MIB:8.2f} MiB  {tree:>11,} B")
    print(f"  {'total':<82} {total / MIB:8.2f} MiB  {total:>11,} B  (limit {args.limit_mib} MiB)")
    if bad:
        return 2
    if total > args.limit_mib * MIB:
        print(f"error: the carry set is {total / MIB:.2f} MiB, over the {args.limit_mib} MiB limit", file=sys.stderr)
        return 1
    try:
        carry = wheels_dir.resolve().relative_to(ROOT)
        print(f"device run: carry ['{carry}'], then: WHEELS_DIR={carry} bash scripts/gpu_smoke.sh OUT_DIR")
    except ValueError:
        print(f"note: {wheels_dir} is outside the repository; copy it into an ignored folder there to carry it")
    return 0


# --------------------------------------------------------------------------- on the machine


def _installed() -> dict[str, str]:
    out = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and canonical(name) not in out:  # the first on sys.path is the one imported
            out[canonical(name)] = dist.version
    return out


def _meets(version: str | None, spec: SpecifierSet) -> bool:
    if version is None:
        return False
    try:
        return spec.contains(Version(version), prereleases=True)
    except InvalidVersion:
        return False


def unmet(requirements: list[str], installed: dict[str, str], environment: dict | None = None) -> list[str]:
    """The requirements (PEP 508 strings; those behind an ``extra`` marker do not apply) that
    ``installed`` (canonical name -> version) does not meet, each with what is there."""
    env = dict(environment or default_environment(), extra="")
    out = []
    for text in requirements:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        have = installed.get(canonical(req.name))
        if not _meets(have, req.specifier):
            out.append(f"{text} (installed: {have or 'nothing'})")
    return out


def cmd_satisfied(args: argparse.Namespace) -> int:
    entries = read_manifest(args.manifest)
    problems = unmet([e.need for e in entries], _installed())
    for p in problems:
        print(f"gpu_smoke: needs {p}", file=sys.stderr)
    return 1 if problems else 0


def cmd_check(args: argparse.Namespace) -> int:
    entries = read_manifest(args.manifest)
    installed = _installed()
    problems = [f"the GPU run needs {p}" for p in unmet([e.need for e in entries], installed)]
    for entry in entries:
        if entry.name not in installed:
            continue
        requires = metadata.distribution(entry.name).requires or []
        problems += [f"{entry.name} {installed[entry.name]} requires {p}" for p in unmet(requires, installed)]
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    if problems:
        print(
            "error: the carried wheels are installed with --no-deps; add what is missing above to "
            f"{MANIFEST.relative_to(ROOT)} (if the machine lacks it) or pick versions the machine's image meets",
            file=sys.stderr,
        )
        return 1
    print("gpu_smoke: " + ", ".join(f"{e.name} {installed[e.name]}" for e in entries))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", type=Path, default=MANIFEST)
    sub = parser.add_subparsers(dest="cmd", required=True)
    plan = sub.add_parser("plan", help="download (if needed) and measure the carry set")
    plan.add_argument("--wheels-dir", type=Path, default=ROOT / ".whl")
    plan.add_argument("--offline", action="store_true", help="measure what is there; download nothing")
    plan.add_argument("--limit-mib", type=float, default=LIMIT_MIB)
    plan.add_argument("--no-tree", action="store_true", help="count the wheels only, not the working tree")
    sub.add_parser("satisfied", help="exit 0 when this Python already meets the manifest")
    sub.add_parser("check", help="after the install: the manifest and the carried packages' requirements are met")
    args = parser.parse_args(argv)
    return {"plan": cmd_plan, "satisfied": cmd_satisfied, "check": cmd_check}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
