"""The layers hold by import closure, not by convention: a layer's modules are imported in a fresh interpreter and
what they pulled in is checked (when something forbidden shows up, each module is then imported alone to name the
ones that pull it in).

- the spec package (`distillspec`) and the orchestrator's core never import JAX (a laptop validates and plans
  without it);
- the trainer never imports the orchestrator (the image carries the trainer and the spec package only);
- the CLI's start-up (`import orchestrator.cli`) pulls in neither the Kubernetes client, Jinja2, matplotlib nor
  JAX: each command imports what it needs when it runs; `distillctl validate` loads neither typer, rich nor any other
  command's module;
- command modules never import each other.
"""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _modules(package: str) -> list[str]:
    path = ROOT.joinpath(*package.split("."))
    return [package] + [
        f"{package}.{info.name}" for info in pkgutil.iter_modules([str(path)]) if info.name != "__main__"
    ]


def _closure(modules: list[str]) -> dict[str, list[str]]:
    """For each module, every module loaded by importing it alone (one fresh interpreter per module)."""
    code = (
        "import json, subprocess, sys\n"
        "out = {}\n"
        "for name in json.loads(sys.argv[1]):\n"
        "    r = subprocess.run([sys.executable, '-c', 'import importlib, json, sys; importlib.import_module(sys.argv[1]);"
        " print(json.dumps(sorted(sys.modules)))', name], capture_output=True, text=True, check=True)\n"
        "    out[name] = json.loads(r.stdout)\n"
        "print(json.dumps(out))\n"
    )
    return _python(code, modules)


def _python(code: str, modules: list[str]):
    """What `code` prints (JSON), run in a fresh interpreter with `modules` (JSON) as its argument."""
    result = subprocess.run(
        [sys.executable, "-c", code, json.dumps(modules)], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout)


def _offending_modules(modules: list[str], forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    """The modules that pull in something `forbidden`, with what. All are imported together first (one interpreter
    instead of one per module: the trainer's 40 would each import JAX); only when that shows an offence is each
    imported alone, to name the culprits."""
    code = (
        "import importlib, json, sys\n"
        "for name in json.loads(sys.argv[1]):\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    if not _offenders({"together": _python(code, modules)}, forbidden):
        return {}
    return _offenders(_closure(modules), forbidden)


def _offenders(closure: dict[str, list[str]], forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    return {
        name: sorted({m.split(".")[0] for m in loaded if m.split(".")[0] in forbidden or m.startswith(forbidden)})
        for name, loaded in closure.items()
        if any(m == f or m.startswith(f + ".") for m in loaded for f in forbidden)
    }


@pytest.mark.slow
def test_spec_package_and_core_never_import_jax():
    modules = _modules("distillspec") + _modules("orchestrator.core") + ["orchestrator.backends"]
    assert _offending_modules(modules, ("jax", "jaxlib", "flax", "optax", "orbax", "trainer")) == {}


@pytest.mark.slow
def test_trainer_never_imports_the_orchestrator():
    modules = [m for m in _modules("trainer") if m != "trainer.tunix_strategy"]  # tunix: an optional extra
    assert _offending_modules(modules, ("orchestrator",)) == {}


def test_cli_start_up_imports_only_what_every_command_needs():
    closure = _closure(["orchestrator.cli"])
    heavy = ("jax", "kubernetes", "jinja2", "matplotlib", "fsspec", "orchestrator.backends.kubernetes", "trainer")
    assert _offenders(closure, heavy) == {}


def test_validate_loads_only_its_own_command():
    code = (
        "import json, sys\n"
        "sys.argv = ['distillctl', 'validate', json.loads(sys.argv[1])[0]]\n"
        "from orchestrator.cli import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "sys.stdout.flush()\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, json.dumps([str(ROOT / "sweeps" / "tiny.yaml")])],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    printed, loaded = result.stdout.splitlines()
    assert "valid spec" in printed
    others = {f"orchestrator.cli.{m}" for m in ("launch", "results", "sweep", "train", "export", "serve", "early_stop")}
    assert {m for m in json.loads(loaded) if m.split(".")[0] in ("rich", "typer") or m in others} == set()


def _imported(path: Path) -> set[str]:
    """Every module an `import` or `from ... import` in the file names (and `from pkg import name` as pkg.name)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_command_modules_never_import_each_other():
    commands = {
        f"orchestrator.cli.{c}"
        for c in ("launch", "results", "spec", "sweep", "train", "export", "serve", "early_stop")
    }
    for module in commands:
        path = ROOT.joinpath(*module.split(".")).with_suffix(".py")
        assert _imported(path) & (commands - {module}) == set(), module
