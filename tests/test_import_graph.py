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


SHARED_LOOP = ("vheat_jax.errors", "vheat_jax.paths", "vheat_jax.heartbeat", "vheat_jax.runtime",
               "vheat_jax.train.loop", "vheat_jax.train.config", "vheat_jax.train.checkpointing",
               "vheat_jax.train.sharding", "vheat_jax.train.distributed", "vheat_jax.train.preemption",
               "vheat_jax.train.workdir_lock", "vheat_jax.train.metrics", "vheat_jax.train.backbone")
TASK_PACKAGES = ("vheat_jax.seg", "vheat_jax.det", "vheat_jax.train.classification")


def reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for dep in graph[todo.pop()] - seen:
            seen.add(dep)
            todo.append(dep)
    return seen


def test_layers_import_downwards_only():
    """The shared loop reaches no task; the tasks do not import each other; only the CLI imports the CLI."""
    graph = module_graph()
    in_task = lambda module, task: module == task or module.startswith(task + ".")  # noqa: E731
    for module in SHARED_LOOP:
        upward = sorted(dep for dep in reaches(graph, module) if any(in_task(dep, t) for t in TASK_PACKAGES))
        assert not upward, (module, upward)
    for task in ("vheat_jax.seg", "vheat_jax.det"):
        others = [t for t in TASK_PACKAGES if t != task and t != "vheat_jax.train.classification"]
        for module in (m for m in graph if in_task(m, task)):
            assert not [dep for dep in graph[module] if any(in_task(dep, t) for t in others)], module
    for module, deps in graph.items():
        if not in_task(module, "vheat_jax.cli"):
            assert not [dep for dep in deps if in_task(dep, "vheat_jax.cli")], module
