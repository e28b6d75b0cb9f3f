"""scripts/gpu_smoke.sh, its carry set (scripts/gpu_smoke_carry.py, gpu_smoke_wheels.txt) and the
Dockerfile's GPU-stack check, as far as they can be checked without a GPU (the GPU checks
themselves need CUDA and run on a GPU machine; see docs/cluster.md, section 7)."""

import ast
import importlib.metadata as md
import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_smoke.sh"


def _carry():
    spec = importlib.util.spec_from_file_location("gpu_smoke_carry", ROOT / "scripts" / "gpu_smoke_carry.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_smoke_carry", mod)
    spec.loader.exec_module(mod)
    return mod


carry = _carry()
MIB = 1024 * 1024


def _run(args, env_extra=None, cwd=ROOT, timeout=120):
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "PYTHON": sys.executable, "HOME": "/tmp"}
    env.update(env_extra or {})
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)


def _fake_wheels(folder: Path, sizes: dict[str, int] | None = None) -> dict[str, Path]:
    """Files named like the manifest's wheels (the names a real download gives), sparse, of the
    given sizes: --plan --offline reads names and sizes only."""
    names = {
        "megatron-core": "megatron_core-0.19.2-cp312-cp312-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
        "transformers": "transformers-5.23.0-py3-none-any.whl",
        "hydra-core": "hydra_core-1.3.8-py3-none-any.whl",
        "omegaconf": "omegaconf-2.3.1-py3-none-any.whl",
        "antlr4-python3-runtime": "antlr4_python3_runtime-4.9.3-py3-none-any.whl",
    }
    assert set(names) == {e.name for e in carry.read_manifest()}, "keep this fixture in step with the manifest"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, filename in names.items():
        path = folder / filename
        with path.open("wb") as f:
            f.truncate((sizes or {}).get(name, 100_000))
        out[name] = path
    return out


# ----------------------------------------------------------------------------- the scripts parse


def test_gpu_smoke_scripts_parse():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    compile((ROOT / "scripts" / "gpu_smoke.py").read_text(), "gpu_smoke.py", "exec")
    compile((ROOT / "scripts" / "gpu_smoke_carry.py").read_text(), "gpu_smoke_carry.py", "exec")
    if shutil.which("shellcheck"):
        r = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU refusal")
def test_gpu_smoke_refuses_without_cuda(tmp_path):
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_smoke.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "no CUDA device" in r.stderr
    r = _run(["bash", str(SCRIPT), str(tmp_path)])
    assert r.returncode != 0 and "no CUDA GPU visible" in r.stderr


# ----------------------------------------------------------------------------- the carry set


def test_manifest_is_a_small_no_deps_set_that_meets_the_project():
    entries = carry.read_manifest()
    by_name = {e.name: e for e in entries}
    assert set(by_name) == {"megatron-core", "transformers", "hydra-core", "omegaconf", "antlr4-python3-runtime"}
    assert [e.name for e in entries if e.sdist] == ["antlr4-python3-runtime"]  # no wheel on PyPI
    assert by_name["antlr4-python3-runtime"].version == "4.9.3"  # omegaconf / hydra: ==4.9.*
    # what is carried meets pyproject.toml, and is what CI pins (constraints.txt) where it pins
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for text in deps:
        req = Requirement(text)
        entry = by_name.get(carry.canonical(req.name))
        if entry is not None:
            assert req.specifier.contains(entry.version), f"{entry.pin} does not meet pyproject's {text}"
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line.strip())
        if m and carry.canonical(m.group(1)) in by_name:
            assert by_name[carry.canonical(m.group(1))].version == m.group(2), f"constraints.txt pins {line}"


def test_manifest_rejects_the_machines_own_packages(tmp_path):
    bad = tmp_path / "m.txt"
    bad.write_text("torch==2.11.0  torch>=2.9\n")
    with pytest.raises(ValueError, match="machine's own"):
        carry.read_manifest(bad)
    bad.write_text("transformers==5.17.0  transformers>=5.20\n")
    with pytest.raises(ValueError, match="does not meet its own requirement"):
        carry.read_manifest(bad)


@pytest.mark.parametrize(
    "filename,ok",
    [
        ("megatron_core-0.19.2-cp312-cp312-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl", True),
        ("megatron_core-0.19.2-cp312-cp312-manylinux2014_x86_64.whl", True),
        ("megatron_core-0.19.2-cp312-cp312-manylinux_2_34_x86_64.whl", False),  # newer glibc than 2.28
        ("megatron_core-0.19.2-cp311-cp311-manylinux_2_28_x86_64.whl", False),  # another Python
        ("megatron_core-0.19.2-cp312-cp312-manylinux_2_28_aarch64.whl", False),
        ("x-1.0-cp39-abi3-manylinux_2_17_x86_64.whl", True),
        ("x-1.0-cp313-abi3-manylinux_2_17_x86_64.whl", False),
        ("transformers-5.23.0-py3-none-any.whl", True),
    ],
)
def test_wheel_tags_for_cpython_312_manylinux_2_28(filename, ok):
    _, _, tags = carry.parse_wheel_name(filename)
    assert any(carry.tag_ok(*t) for t in tags) is ok


def test_plan_lists_each_wheel_and_the_total(tmp_path):
    sizes = {"megatron-core": 2_370_641, "transformers": 13_336_114}
    wheels = _fake_wheels(tmp_path / "whl", sizes)
    r = _run(["bash", str(SCRIPT), "--plan", "--offline"], {"WHEELS_DIR": str(tmp_path / "whl")})
    assert r.returncode == 0, r.stdout + r.stderr
    for path in wheels.values():
        assert path.name in r.stdout
    assert "2.26 MiB" in r.stdout and "12.72 MiB" in r.stdout
    total = sum(p.stat().st_size for p in wheels.values())
    assert re.search(rf"wheels\s+{total / MIB:.2f} MiB\s+{total:,} B", r.stdout)
    assert "working tree that travels with them" in r.stdout and "(limit 64 MiB)" in r.stdout


def test_plan_fails_over_64_mib(tmp_path):
    _fake_wheels(tmp_path / "whl", {"transformers": 65 * MIB})  # sparse: no disk used
    r = _run(["bash", str(SCRIPT), "--plan", "--offline"], {"WHEELS_DIR": str(tmp_path / "whl")})
    assert r.returncode == 1 and "over the 64 MiB limit" in r.stderr, r.stdout + r.stderr


def test_plan_refuses_what_is_not_the_carry_set(tmp_path):
    wheels = _fake_wheels(tmp_path / "whl")
    wheels["omegaconf"].unlink()
    (tmp_path / "whl" / "torch-2.11.0-cp312-cp312-manylinux_2_28_x86_64.whl").touch()
    (tmp_path / "whl" / "transformers-5.17.0-py3-none-any.whl").touch()
    (tmp_path / "whl" / "psutil-7.2.2-cp36-abi3-manylinux_2_17_x86_64.whl").touch()
    r = _run(["bash", str(SCRIPT), "--plan", "--offline"], {"WHEELS_DIR": str(tmp_path / "whl")})
    assert r.returncode == 2, r.stdout + r.stderr
    assert "torch is the machine's own" in r.stderr
    assert "version 5.17.0, the manifest wants transformers==5.23.0" in r.stderr
    assert "psutil is not in the carry set" in r.stderr
    assert "missing omegaconf==2.3.1" in r.stderr


def test_download_commands_are_no_deps_cp312_manylinux_2_28():
    by_name = {e.name: e for e in carry.read_manifest()}
    cmd = carry.pip_download_cmd(by_name["megatron-core"], Path("w"), python="py")
    assert cmd[:4] == ["py", "-m", "pip", "download"] and "--no-deps" in cmd and "--only-binary=:all:" in cmd
    assert cmd[cmd.index("--python-version") + 1] == "3.12" and "manylinux_2_28_x86_64" in cmd
    assert cmd[-1] == "megatron-core==0.19.2"
    cmd = carry.pip_download_cmd(by_name["antlr4-python3-runtime"], Path("w"), python="py")
    assert cmd[:4] == ["py", "-m", "pip", "wheel"] and "--no-deps" in cmd and cmd[-1] == "antlr4-python3-runtime==4.9.3"


def test_unmet_requirements():
    installed = {"torch": "2.11.0", "transformers": "5.17.0", "regex": "2026.11.19"}
    reqs = [
        "torch>=2.6.0",
        "transformers>=5.20,<6",
        "regex>=2025.10.22",
        "psutil",
        "pytest>=8; extra == 'test'",
        "tomli; python_version < '3.11'",
    ]
    assert carry.unmet(reqs, installed) == ["transformers>=5.20,<6 (installed: 5.17.0)", "psutil (installed: nothing)"]


def test_satisfied_and_check_pass_in_this_environment():
    # this environment (the Makefile's) has the carry set's packages, with their requirements
    for cmd in ("satisfied", "check"):
        r = _run([sys.executable, str(ROOT / "scripts" / "gpu_smoke_carry.py"), cmd])
        assert r.returncode == 0, r.stdout + r.stderr


def test_a_broken_editable_install_fails_loudly(tmp_path):
    """No PYTHONPATH fallback: pip's error is shown and the script stops (pivotrl_nemo.kernels and
    pivotrl_nemo.conf exist only as setup.py maps them). The broken project is a copy of the
    scripts with a setup.py that raises, under another name, so nothing real is installed."""
    (tmp_path / "scripts").mkdir()
    for name in ("gpu_smoke.sh", "gpu_smoke_carry.py", "gpu_smoke_wheels.txt"):
        shutil.copy(ROOT / "scripts" / name, tmp_path / "scripts" / name)
    (tmp_path / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=69"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "gpu-smoke-broken-fixture"\nversion = "0.0.1"\n'
    )
    (tmp_path / "setup.py").write_text("raise RuntimeError('simulated broken setup.py')\n")
    r = _run(["bash", str(tmp_path / "scripts" / "gpu_smoke.sh"), "--install-only"], cwd=tmp_path)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "simulated broken setup.py" in r.stderr  # pip's own error, not swallowed
    assert "-e .' failed" in r.stderr and "pivotrl_nemo.kernels" in r.stderr
    assert "installed and checked" not in r.stdout
    with pytest.raises(md.PackageNotFoundError):
        md.version("gpu-smoke-broken-fixture")


def test_the_script_never_falls_back_to_pythonpath():
    code = "\n".join(line for line in SCRIPT.read_text().splitlines() if not line.lstrip().startswith("#"))
    assert "PYTHONPATH" not in code
    assert "--no-deps" in code and "torch_before" in code and "torch_after" in code


# ----------------------------------------------------------------------------- the Dockerfile


def _dockerfile_heredocs(text: str) -> list[str]:
    return re.findall(r"^RUN python - <<'PY'\n(.*?)^PY$", text, flags=re.S | re.M)


def test_dockerfile_check_step_imports_the_gpu_stack_and_fails_loudly():
    text = (ROOT / "Dockerfile").read_text()
    checks = [body for body in _dockerfile_heredocs(text) if "import vllm" in body]
    assert len(checks) == 1, "one python heredoc step checks the GPU stack"
    tree = ast.parse(checks[0])
    # imported at the top level: not inside try/except (reported-and-ignored was the old bug)
    top = {a.name for node in tree.body if isinstance(node, ast.Import) for a in node.names}
    assert {"vllm", "transformer_engine", "transformer_engine.pytorch", "megatron.core", "transformers"} <= top
    assert not any(isinstance(node, ast.Try) for node in ast.walk(tree))
    # ... and it runs after the stack is installed and before this package goes on top
    check_at = text.index(checks[0])
    assert text.index('"vllm==${VLLM_VERSION}"') < check_at
    assert text.index('"transformer-engine[core_cu13,pytorch]==${TE_VERSION}"') < check_at
    assert check_at < text.index("pip install -c base-constraints.txt '.[dev]'")


def test_dockerfile_pins_a_vllm_that_accepts_our_transformers():
    text = (ROOT / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.M))
    assert "nemo-rl" not in args["BASE_IMAGE"] and "devel" in args["BASE_IMAGE"]  # nvcc for TE's extension
    deps = {
        carry.canonical(Requirement(t).name): Requirement(t)
        for t in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    assert deps["transformers"].specifier.contains(args["TRANSFORMERS_VERSION"])
    assert deps["megatron-core"].specifier.contains(args["MEGATRON_CORE_VERSION"])
    # vllm 0.33.0's published requirement (its wheel's METADATA): transformers>=5.16.1,<5.21.0
    assert args["VLLM_VERSION"] == "0.33.0"
    assert Requirement("transformers>=5.16.1,<5.21.0").specifier.contains(args["TRANSFORMERS_VERSION"])


def test_dockerfile_copies_what_pip_install_dot_reads():
    text = (ROOT / "Dockerfile").read_text()
    copied = {p for line in re.findall(r"^COPY (.+)$", text, flags=re.M) for p in line.split()[:-1]}
    assert {"pyproject.toml", "setup.py", "README.md", "pivotrl_nemo", "kernels", "conf"} <= copied
