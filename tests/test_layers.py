"""The package's layout (DESIGN.md §1): each folder of ``mape/`` is one layer and imports only from the layers
below it (or its own), the modules import each other without cycles, no module imports another's private names,
and the engine never imports gradio or the app's ``ui``. Read from the source (every import, also those inside
functions), so a lazy import cannot hide an upward dependency."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "mape"
#: bottom to top; the modules at the top of the package (the CLI) sit above every layer
LAYERS = ("base", "method", "data", "run", "evaluation", "serving")
TOP = len(LAYERS)
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else TOP


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, names imported from it, line) for every import of a ``mape`` module in the file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] in ("mape", "ui", "gradio")]
        elif isinstance(node, ast.ImportFrom) and node.level:  # relative: named as the absolute module it is
            out.append((f"relative import at level {node.level}", [], node.lineno))
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] not in ("mape", "ui", "gradio"):
                continue
            names = [a.name for a in node.names]
            submodules = [n for n in names if f"{node.module}.{n}" in MODULES]
            out += [(f"{node.module}.{n}", [], node.lineno) for n in submodules]
            rest = [n for n in names if n not in submodules]
            if rest or not submodules:
                out.append((node.module, rest, node.lineno))
    return out


def graph() -> dict[str, set[str]]:
    return {m: {i for i, _, _ in imports(p) if i in MODULES and i != m} for m, p in MODULES.items()}


def test_every_module_is_in_a_layer_folder():
    loose = [m for m in MODULES if layer(m) == TOP and m not in ("mape", "mape.cli", "mape.__main__")]
    assert not loose, f"modules outside the layer folders: {loose}"
    for name in LAYERS:
        doc = ast.get_docstring(ast.parse((ROOT / name / "__init__.py").read_text()))
        assert doc and doc.startswith(f"Layer {LAYERS.index(name)}"), name


def test_no_upward_import_and_no_gradio_or_ui():
    bad = []
    for m, p in MODULES.items():
        for imported, _, line in imports(p):
            top = imported.split(".")[0]
            if top in ("gradio", "ui") or imported.startswith("relative"):
                bad.append(f"{p.name}:{line} imports {imported}")
            elif top == "mape" and imported != "mape" and layer(imported) > layer(m):
                bad.append(f"{m}:{line} imports {imported} (layer {LAYERS[layer(m)] if layer(m) < TOP else 'top'} "
                           f"-> {LAYERS[layer(imported)] if layer(imported) < TOP else 'top'})")
    assert not bad, "\n".join(bad)


def test_no_import_cycle():
    g = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(m, stack):
        state[m] = 1
        for n in sorted(g[m]):
            if state.get(n) == 1:
                cycles.append(" -> ".join(stack[stack.index(n):] + [n]))
            elif n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)


def test_no_module_imports_another_modules_private_names():
    bad = [f"{m}:{line} imports {name} from {imported}"
           for m, p in MODULES.items() for imported, names, line in imports(p)
           for name in names if name.startswith("_") and imported != m and not name.startswith("__")]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_and_functions_stay_small(module):
    path = MODULES[module]
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{path}: {len(text.splitlines())} lines"
    long = [f"{n.name} ({n.end_lineno - n.lineno + 1} lines)" for n in ast.walk(ast.parse(text))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{path}: {long}"


def test_the_checks_see_a_violation(tmp_path):
    """The checks are not vacuous: an upward lazy import and a private name are found in a planted module."""
    planted = tmp_path / "mod.py"
    planted.write_text("def f():\n    from mape.serving.owner import _served\n    import gradio\n")
    found = imports(planted)
    assert ("mape.serving.owner", ["_served"], 2) in found and ("gradio", [], 3) in found
    assert layer("mape.serving.owner") > layer("mape.method.gates")


def test_the_public_api_resolves_and_import_mape_stays_light():
    """``from mape import prepare, unlearn, UnlearnConfig`` (the README's way in) works, every name of
    ``mape.API`` is defined where it says, and ``import mape`` imports neither torch nor the layers."""
    import subprocess
    import sys

    code = ("import sys, mape; assert 'torch' not in sys.modules and 'mape.run' not in sys.modules; "
            "from mape import prepare, unlearn, UnlearnConfig; assert 'mape.run.unlearn' in sys.modules; "
            "import importlib; [getattr(importlib.import_module(m), n) for n, m in mape.API.items()]")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT.parent)


def test_the_page_is_built_without_torch_and_loads_it_in_the_background():
    """Issue 28 item 4: ``import app`` builds the whole page (presets, forget-set preview data, every section)
    without importing torch or transformers, which take seconds on a small CPU; after the first page load the
    app imports them in a background thread, once."""
    import os
    import subprocess
    import sys

    code = ("import sys, app; heavy = [m for m in ('torch', 'transformers', 'captum') if m in sys.modules]; "
            "assert not heavy, heavy; assert len(app.demo.blocks) > 100; "
            "from mape.serving import owner; t = owner.load_engine_in_background(); t.join(); "
            "assert 'torch' in sys.modules and 'transformers' in sys.modules and 'mape.run.unlearn' in sys.modules; "
            "assert owner.load_engine_in_background() is None; print('ok')")
    env = dict(os.environ, MAPE_APP_WARM="0", MAPE_APP_PRESETS="tiny-bbc,tiny-mnist")
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT.parent, env=env,
                         capture_output=True, text=True)
    assert out.stdout.strip().endswith("ok")


def test_the_page_is_served_without_a_plotly_figure():
    """Issue 28 item 4: no plot of the served page holds a figure (``ui.common.deferred_plot``), so the browser
    does not fetch and parse plotly's 1.3 MB script before the page is usable; the page has plots, and its config
    (what the browser receives) names none of plotly's figure fields."""
    import json
    import os
    import subprocess
    import sys

    code = ("import json, app, gradio as gr; plots = [b for b in app.demo.blocks.values() if isinstance(b, gr.Plot)]; "
            "print(json.dumps({'plots': len(plots), 'with_value': [b.elem_id for b in plots if b.value is not None], "
            "'config': json.dumps(app.demo.get_config_file(), default=str)}))")
    env = dict(os.environ, MAPE_APP_WARM="0", MAPE_APP_PRESETS="tiny-bbc,tiny-mnist")
    out = json.loads(subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT.parent, env=env,
                                    capture_output=True, text=True).stdout.strip().splitlines()[-1])
    assert out["plots"] >= 13 and out["with_value"] == []
    assert '"type": "plotly"' not in out["config"] and "annotations" not in out["config"]
