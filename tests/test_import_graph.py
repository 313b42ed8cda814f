"""Imports: the package's import graph has no cycle, and ``import vheat_jax`` needs no training stack."""

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_graph() -> dict[str, set[str]]:
    """Module -> the vheat_jax modules it imports; a package's ``__init__`` counts as the package."""
    files = {}
    for path in (ROOT / "vheat_jax").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in files.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vheat_jax"):
                for alias in node.names:  # "from vheat_jax.train import loop" imports the module loop
                    submodule = f"{node.module}.{alias.name}"
                    imported.add(submodule if submodule in files else node.module)
            elif isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names if alias.name.startswith("vheat_jax")}
        graph[name] = {m for m in imported if m in files and m != name}
    return graph


def find_cycle(graph: dict[str, set[str]], packages: set[str]) -> list[str] | None:
    """A cycle among modules, not counting edges into packages (a package re-exporting its modules is no cycle)."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for dep in sorted(graph[node] - packages):
            if state.get(dep) == "open":
                return path[path.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep, [*path, dep])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and start not in packages and (cycle := visit(start, [start])):
            return cycle
    return None


def test_no_import_cycle():
    graph = module_graph()
    packages = {name for name in graph if (ROOT / name.replace(".", "/") / "__init__.py").exists()}
    assert len(graph) > 50 and "vheat_jax.train.loop" in graph
    assert find_cycle(graph, packages) is None, find_cycle(graph, packages)


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}, set()) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}, set()) is None


def test_model_and_converter_need_no_training_stack(tmp_path, vheat_fixtures):
    """What a bare accelerator image has (jax, flax, numpy) is enough for ``import vheat_jax``: the model,
    reading an official .pth and writing/reading a .msgpack, with the training stack made unimportable."""
    blocked = ["grain", "orbax", "tensorflow_datasets", "tensorflow", "tensorboardX", "ml_collections", "sklearn",
               "pycocotools", "torch", "optax"]
    script = f"""
import sys
for name in {blocked!r}:
    sys.modules[name] = None
import numpy as np
import vheat_jax
arch, params = vheat_jax.params_from_torch({str(vheat_fixtures / "tiny_prenorm.pth")!r})
logits = arch.build().apply({{"params": params}}, np.zeros((1, 64, 64, 3), np.float32))
vheat_jax.save_msgpack(params, arch, {str(tmp_path / "w.msgpack")!r})
again, _ = vheat_jax.load_any({str(tmp_path / "w.msgpack")!r})
assert again == arch and logits.shape == (1, 10)
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


TASK_PACKAGES = ("vheat_jax.cls", "vheat_jax.seg", "vheat_jax.det")
CLI = "vheat_jax.cli"


def in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for dep in graph[todo.pop()] - seen:
            seen.add(dep)
            todo.append(dep)
    return seen


def layer(module: str) -> int:
    """0: the core (model, converter, the shared loop in ``train``); 1: a task package; 2: the CLI."""
    if in_package(module, CLI):
        return 2
    return 1 if any(in_package(module, task) for task in TASK_PACKAGES) else 0


def test_layers_import_downwards_only():
    """Core, then the three task packages, then the CLI: nothing reaches a layer above its own, and no task
    package imports another."""
    graph = module_graph()
    assert {layer(m) for m in graph} == {0, 1, 2} and "vheat_jax.train.loop" in graph
    for module in graph:
        upward = sorted(dep for dep in reaches(graph, module) if layer(dep) > layer(module))
        assert not upward, (module, upward)
    for task in TASK_PACKAGES:
        others = [t for t in TASK_PACKAGES if t != task]
        for module in (m for m in graph if in_package(m, task)):
            assert not [dep for dep in graph[module] if any(in_package(dep, t) for t in others)], module


# The model of classification is the core's (vheat_jax.model); segmentation and detection add model.py.
ROLES = {"config.py", "data.py", "training.py", "task.py", "evaluation.py", "pretrained.py"}


def test_the_task_packages_look_alike():
    """The same file names for the same roles in every task package."""
    for task in TASK_PACKAGES:
        folder = ROOT / task.replace(".", "/")
        missing = ROLES - {path.name for path in folder.glob("*.py")}
        assert not missing, (task, sorted(missing))
