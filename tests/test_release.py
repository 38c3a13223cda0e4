"""What a user who depends on the package gets: the wheel and the sdist carry the
licence, ``py.typed`` and every module; the wheel installs on its own and its command
runs; the public API is fully annotated and passes a strict type check; the version is
written in one place."""

from __future__ import annotations

import inspect
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import captum_fdcam

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "captum_fdcam"
#: Left out of the copy the packages are built from: nothing is built in the checkout.
_NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv*", "build", "dist", "_build", "__pycache__", "*.egg-info", ".*_cache",
    "results", "figures", ".whl",
)  # fmt: skip


def _modules() -> set[str]:
    return {p.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("*.py")}


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel and the sdist, built (without network: the installed setuptools) from
    a copy of the checkout."""
    pytest.importorskip("build")
    source = tmp_path_factory.mktemp("source") / "captum-fdcam"
    shutil.copytree(ROOT, source, ignore=_NOT_SOURCES)
    out = tmp_path_factory.mktemp("dist")
    command = [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), "."]
    run = subprocess.run(command, cwd=source, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    return out


@pytest.mark.slow
def test_the_wheel_and_the_sdist_carry_the_licence_the_types_and_every_module(
    dist: Path,
) -> None:
    (wheel,) = dist.glob("captum_fdcam-*.whl")
    (sdist,) = dist.glob("captum_fdcam-*.tar.gz")
    version = captum_fdcam.__version__
    assert wheel.name == f"captum_fdcam-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert f"captum_fdcam-{version}.dist-info/licenses/LICENSE" in names
    assert "captum_fdcam/py.typed" in names
    assert _modules() <= names, sorted(_modules() - names)
    with tarfile.open(sdist) as archive:
        prefix = f"captum_fdcam-{version}/"
        members = {m.name.removeprefix(prefix) for m in archive.getmembers()}
    assert {"LICENSE", "captum_fdcam/py.typed", "setup.cfg", "pyproject.toml"} <= members
    assert _modules() <= members, sorted(_modules() - members)
    licence = (ROOT / "LICENSE").read_text()
    assert licence.startswith("BSD 3-Clause License")


@pytest.mark.slow
def test_the_wheel_installs_alone_and_its_command_explains_the_bundled_photo(
    dist: Path, tmp_path: Path
) -> None:
    """Into a fresh environment that reuses the installed dependencies (PyTorch and the
    rest are not downloaded again) but not the checkout: the package comes from the
    wheel only."""
    (wheel,) = dist.glob("captum_fdcam-*.whl")
    env_dir = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    # The dependencies' folder as a plain path: its .pth files (this checkout's
    # editable install among them) are not processed, so only the wheel's package is seen.
    deps = next(p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir())
    Path(site, "reuse-dependencies.pth").write_text(deps + "\n")
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps"]
    run = subprocess.run([*install, "--no-index", str(wheel)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    environment["OMP_NUM_THREADS"] = "1"
    where = subprocess.run(
        [str(python), "-c", "import captum_fdcam; print(captum_fdcam.__file__)"],
        capture_output=True, text=True, cwd=tmp_path, env=environment, check=True,
    ).stdout.strip()  # fmt: skip
    assert where.startswith(site), where
    command = env_dir / "bin" / "captum-fdcam"
    help_run = subprocess.run(
        [str(command), "--help"], capture_output=True, text=True, cwd=tmp_path, env=environment
    )
    assert help_run.returncode == 0 and help_run.stdout.startswith("usage: captum-fdcam")
    out = tmp_path / "figures"
    explain = [str(command), "explain", "--methods", "Grad-CAM", "--out", str(out), "--quiet"]
    run = subprocess.run(explain, capture_output=True, text=True, cwd=tmp_path, env=environment)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "class 285" in run.stdout  # the bundled cat
    assert sorted(p.name for p in out.iterdir()) == ["chelsea.grad-cam.npy", "chelsea.png"]


def test_the_version_is_written_once() -> None:
    setup = (ROOT / "setup.cfg").read_text()
    assert "version = attr: captum_fdcam.__version__" in setup
    assert captum_fdcam.__version__.count(".") == 2
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## [{captum_fdcam.__version__}]" in changelog


def _unannotated(obj: object, name: str) -> list[str]:
    """The parameters and returns of ``obj``'s callables defined in this package that
    carry no annotation."""
    missing = []
    callables: list[tuple[str, object]] = []
    if inspect.isclass(obj):
        for attr, value in vars(obj).items():
            if attr.startswith("_") and attr != "__init__":
                continue
            if isinstance(value, (staticmethod, classmethod)):
                value = value.__func__
            if inspect.isfunction(value):
                callables.append((f"{name}.{attr}", value))
    elif inspect.isfunction(obj):
        callables.append((name, obj))
    for label, function in callables:
        signature = inspect.signature(function)  # type: ignore[arg-type]
        for parameter in list(signature.parameters.values()):
            if parameter.name in ("self", "cls"):
                continue
            if parameter.annotation is inspect.Parameter.empty:
                missing.append(f"{label}({parameter.name})")
        if signature.return_annotation is inspect.Signature.empty:
            missing.append(f"{label} -> ?")
    return missing


def test_every_export_is_annotated() -> None:
    missing = []
    for name in captum_fdcam.__all__:
        obj = getattr(captum_fdcam, name)
        if getattr(obj, "__module__", "").startswith("captum_fdcam"):
            missing += _unannotated(obj, name)
    assert missing == []


@pytest.mark.slow
def test_the_public_api_passes_a_strict_type_check() -> None:
    """As scripts/test.sh runs it: a user's code against the exports, ``mypy --strict``."""
    pytest.importorskip("mypy")
    command = [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent"]
    command += ["captum_fdcam/__init__.py", "tests/typing/public_api.py"]
    run = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-3000:]
