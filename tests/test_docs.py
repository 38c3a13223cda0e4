"""The documentation builds with Sphinx without a single warning (``-W``).

Each build runs in its own process, as ``scripts/docs.sh`` does, into a temporary
folder: ``docs/_build`` is left alone.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import captum_fdcam

# Each test builds the Sphinx site in a subprocess: tens of seconds.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

#: One page per method under docs/methods/, and the classes each page documents.
METHOD_PAGES = {
    "grad-cam": ["LayerGradCam"],
    "grad-cam-plus-plus": ["LayerGradCamPlusPlus"],
    "xgrad-cam": ["LayerXGradCam"],
    "layer-cam": ["LayerLayerCam"],
    "score-cam": ["LayerScoreCam"],
    "ablation-cam": ["LayerAblationCam"],
    "group-cam": ["LayerGroupCam"],
    "fd-cam": ["LayerFDCam"],
    "fg-cam": ["LayerFGCam", "FGCam"],
    "lrp": ["PropagationLRP", "CLRP", "SGLRP"],
}


def sphinx_build(source: Path, out: Path) -> subprocess.CompletedProcess[str]:
    """``sphinx -W --keep-going -q -b html source out``: warnings go to stderr."""
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html"]
    return subprocess.run(
        [*command, str(source), str(out)], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("docs") / "html"
    result = sphinx_build(DOCS, out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr and "ERROR" not in result.stderr, result.stderr
    return out


def test_api_reference_is_generated_from_the_docstrings(site: Path) -> None:
    api = (site / "api.html").read_text(encoding="utf-8")
    for name in ("captum_fdcam.LayerFDCam", "captum_fdcam.evaluation.explain"):
        assert f'id="{name}"' in api, name
    assert "LayerFDCam" in api and "explain" in api


def test_one_page_per_method(site: Path) -> None:
    pages = {p.stem for p in (site / "methods").glob("*.html")} - {"index"}
    assert pages == set(METHOD_PAGES)
    documented = {name for names in METHOD_PAGES.values() for name in names}
    assert {cls.__name__ for cls in captum_fdcam.METHODS.values()} <= documented
    for page, names in METHOD_PAGES.items():
        html = (site / "methods" / f"{page}.html").read_text(encoding="utf-8")
        for section in ("parameters", "cost", "papers?", "example"):
            assert re.search(f'<section id="{section}">', html), (page, section)
        for name in names:  # each class links to its API entry
            assert f'api.html#captum_fdcam.{name}"' in html, (page, name)


def test_a_broken_reference_fails_the_build(tmp_path: Path) -> None:
    # A copy of the repository's layout (docs include ../README.md and show images from
    # ../benchmarks), with one extra page whose link leads nowhere.
    copy = tmp_path / "repo"
    copy.mkdir()
    for entry in ROOT.iterdir():
        if entry.is_file():  # README.md: MyST resolves links relative to its real path
            shutil.copy2(entry, copy / entry.name)
        elif entry.name not in {"docs", ".git", ".venv"}:
            (copy / entry.name).symlink_to(entry)
    docs = copy / "docs"
    shutil.copytree(DOCS, docs, ignore=shutil.ignore_patterns("_build"))
    (docs / "broken.md").write_text(
        "---\norphan: true\n---\n\n# Broken\n\nSee [the missing page](no-such-page.md).\n",
        encoding="utf-8",
    )
    result = sphinx_build(docs, tmp_path / "html")
    assert result.returncode != 0
    warnings = [line for line in result.stderr.splitlines() if "WARNING" in line]
    assert warnings, result.stderr
    assert all("broken.md" in line and "no-such-page" in line for line in warnings), warnings
