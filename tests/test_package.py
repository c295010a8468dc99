"""The installable package (pyproject.toml): its dependencies are requirements.txt's, gradio only comes with
the `app` extra, the wheel holds the engine (not the app) and a `mape` console script that is the CLI."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mape import cli

tomllib = pytest.importorskip("tomllib")
ROOT = Path(__file__).resolve().parents[1]


def _requirement_lines(name: str) -> list[str]:
    lines = (ROOT / name).read_text().splitlines()
    return [ln.split("#")[0].strip() for ln in lines if ln.split("#")[0].strip() and not ln.startswith("-")]


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_dependencies_are_requirements_txt_without_the_app():
    """One set of ranges: the package's runtime dependencies are requirements.txt (what a Space installs) less
    gradio, which the `app` extra adds with the same pin."""
    reqs = _requirement_lines("requirements.txt")
    gradio = [r for r in reqs if r.startswith("gradio")]
    assert len(gradio) == 1
    project = _project()
    assert sorted(project["dependencies"]) == sorted(r for r in reqs if not r.startswith("gradio"))
    assert project["optional-dependencies"]["app"] == gradio
    assert project["optional-dependencies"]["ray"] == _requirement_lines("requirements-ray.txt")
    dev = gradio + _requirement_lines("requirements-dev.txt")
    assert sorted(project["optional-dependencies"]["dev"]) == sorted(dev)
    assert project["scripts"] == {"mape": "mape.cli:main"}


def test_python_versions_cover_the_space_and_ci():
    spec = _project()["requires-python"]
    assert spec == ">=3.10,<3.12", spec  # Spaces run 3.10.13, CI 3.11


def test_console_script_names_itself(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["/venv/bin/mape", "--help"])
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("usage: mape ")
    monkeypatch.setattr(sys, "argv", [str(ROOT / "mape" / "__main__.py")])
    assert cli.build_parser().prog == "python -m mape"


def test_wheel_holds_the_engine_and_the_console_script(tmp_path):
    """Builds the wheel from a copy of the sources (no build/ left in the checkout, nothing stale picked up)
    with this environment's setuptools (no download) and reads what it would install."""
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    shutil.copytree(ROOT / "mape", src / "mape", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(src)], check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("mape_unlearn-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry = zf.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    modules = {n for n in names if n.endswith(".py")}
    assert {p.relative_to(ROOT).as_posix() for p in (ROOT / "mape").rglob("*.py")} == modules  # every layer
    assert re.search(r"^mape = mape\.cli:main$", entry, re.M)
    requires = re.findall(r"^Requires-Dist: (.*)$", meta, re.M)
    assert any(r.startswith("torch") for r in requires)
    assert [r for r in requires if r.startswith("gradio=")] == ['gradio==6.31.0; extra == "app"',
                                                                'gradio==6.31.0; extra == "dev"']
    assert "Requires-Python: <3.12,>=3.10" in meta or "Requires-Python: >=3.10,<3.12" in meta
