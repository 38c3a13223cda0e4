"""docs/installation.md says what setup.cfg installs: every dependency, every extra and
what it brings, the Python version, and no placeholder where a command should be."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "installation.md"


def requirements(value: str) -> list[str]:
    """The non-empty lines of a setup.cfg list, e.g. ``torch>=2.1``."""
    return [line.strip() for line in value.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def setup_cfg() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg", encoding="utf-8")
    return config


@pytest.fixture(scope="module")
def page() -> str:
    return PAGE.read_text(encoding="utf-8")


def test_every_dependency_is_named(setup_cfg: configparser.ConfigParser, page: str) -> None:
    needed = requirements(setup_cfg["options"]["install_requires"])
    assert needed, "setup.cfg lists no install_requires"
    missing = [r for r in needed if f"`{r}`" not in page]
    assert not missing, f"docs/installation.md does not name {missing}"


def test_python_version(setup_cfg: configparser.ConfigParser, page: str) -> None:
    assert f"python_requires = {setup_cfg['options']['python_requires']}" in page


def test_every_extra_and_what_it_brings(setup_cfg: configparser.ConfigParser, page: str) -> None:
    extras = setup_cfg["options.extras_require"]
    assert set(extras) >= {"dev", "docs", "demo", "bench"}
    rows = {match[1]: match[2] for match in re.finditer(r"^\| `([\w-]+)` \| (.*?) \|", page, re.M)}
    for extra, value in extras.items():
        assert extra in rows, f"no row for the {extra!r} extra"
        named = re.findall(r"`([^`]+)`", rows[extra])
        assert named == requirements(value), extra


def test_no_placeholder_url(page: str) -> None:
    for placeholder in ("example.com", "your-org", "your_org", "<repository", "<url", "TODO"):
        assert placeholder.lower() not in page.lower(), placeholder
    assert not re.search(r"<[a-z][^>]*>", page), "an <...> placeholder"


def test_the_commands_exist(page: str) -> None:
    for script in set(re.findall(r"bash (scripts/[\w.]+)", page)):
        assert (ROOT / script).is_file(), script
