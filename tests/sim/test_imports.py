"""Imports flow one way: no module of `sim` imports, directly or through others, one that imports
it back, counting imports inside functions too (docs/architecture.md, "`sim` layout")."""

from __future__ import annotations

import ast
from pathlib import Path

SIM = Path(__file__).resolve().parents[2] / "sim"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SIM.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the `sim` modules it imports anywhere in its body (functions included)."""
    modules = {_module_name(path): path for path in SIM.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                # `from sim.server import aggregate` names a module; `from sim.config import X` a name.
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
            for target in targets:
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_of_sim_imports_itself_back():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_sees_a_circle_through_a_function_level_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert "sim.config" in import_graph()["sim.runner"]  # module-level imports are seen
    # resume's function-level use of the metrics file format is seen too
    assert "sim.records" in import_graph()["sim.resume"]


def run_fresh(script: str):
    """`script` in a fresh interpreter importing this tree's `sim`."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=SIM.parent,
                          env={"PYTHONPATH": str(SIM.parent), "PATH": "/usr/bin:/bin"}, timeout=120)


def test_help_and_list_presets_do_not_load_torch():
    script = (
        "import sys\n"
        "from sim.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "main(['list-presets'])\n"
        "print('torch loaded' if 'torch' in sys.modules else 'torch not loaded')\n"
    )
    result = run_fresh(script)
    assert result.returncode == 0, result.stderr
    assert "table1-fmnist" in result.stdout and result.stdout.strip().endswith("torch not loaded")


def test_sweep_dry_run_and_config_checks_do_not_load_torch_or_numpy(tmp_path):
    """`sweep --dry-run` validates every trial's config; the checks read the components'
    declarations (sim.lazy keeps torch and numpy out until a tensor is needed)."""
    script = (
        "import sys\n"
        "from sim.cli import main\n"
        "from sim.config import load_config\n"
        "from sim.errors import ConfigError\n"
        f"for grid in ('leaderboard', 'poisoning-small'):\n"
        f"    assert main(['sweep', '--grid', grid, '--out', {str(tmp_path)!r} + '/' + grid, '--dry-run']) == 0\n"
        "load_config('table1-fmnist', None, ['client_defense.type=leadfl', 'client_defense.scope=conv', 'engine=auto'])\n"
        "try:\n"
        "    load_config(None, None, ['client_defense.type=leadfl', 'client_defense.scope=[fc.weight, nope]'])\n"
        "except ConfigError as error:\n"
        "    print('refused:', error)\n"
        "print('loaded:', [name for name in ('torch', 'numpy', 'matplotlib') if name in sys.modules])\n"
    )
    result = run_fresh(script)
    assert result.returncode == 0, result.stderr
    assert "trial" in result.stdout and "refused: client_defense.scope names 'nope'" in result.stdout
    assert result.stdout.strip().endswith("loaded: []")


def test_the_lazy_decorators_run_the_function_without_gradients():
    import torch

    from sim.lazy import inference_mode, no_grad

    @no_grad
    def grad_enabled(x):
        return torch.is_grad_enabled(), (x * 2).requires_grad

    @inference_mode
    def in_inference():
        return torch.is_inference_mode_enabled()

    assert grad_enabled(torch.ones(2, requires_grad=True)) == (False, False)
    assert in_inference() is True
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    assert grad_enabled.__name__ == "grad_enabled"
