"""The project's structure: no import cycles, no hidden imports, file formats without TF or jax.

The import graph is read from the source with ``ast`` (nothing is imported), so a cycle is found
even where it would only bite in some import order. Each checker is also run on a small planted
tree, so a checker that silently finds nothing fails too.
"""

import ast
import dataclasses
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Scanned code: packages and script folders (benchmarks run as scripts beside each other).
PACKAGES = ("data_pipelines", "intrakd_jax", "configs")
SCRIPT_DIRS = ("benchmarks",)
SCRIPTS = ("main.py",)

# Modules that may be imported inside a function: optional dependencies that are slow to import,
# needed on one path only, and the project modules that import them at their top.
# data_pipelines.tfds_builders imports tensorflow_datasets (seconds to import), needed only with
# config.data.source = "tfds"; benchmarks.torch_reference imports torch (benchmarks/requirements).
# intrakd_jax.weights.readers imports torch / safetensors only to read such a checkpoint file.
FUNCTION_IMPORT_ALLOWLIST = (
    "tensorflow_datasets",
    "torch",
    "safetensors",
    "data_pipelines.tfds_builders",
    "benchmarks.torch_reference",
)

# Must import with numpy, scipy, OpenCV, Pillow and absl only.
TF_FREE_MODULES = (
    "data_pipelines.util",
    "data_pipelines.errors",
    "data_pipelines.formats.lists",
    "data_pipelines.formats.lines_txt",
    "data_pipelines.formats.llamas",
    "data_pipelines.formats.culane",
    "data_pipelines.formats.apolloscape",
)
BLOCKED = ("tensorflow", "tensorflow_datasets", "jax", "jaxlib", "flax")


# ----------------------------------------------------------------------------------------------
# Reading the code.


@dataclasses.dataclass
class Code:
    """The scanned modules of a source tree.

    Attributes:
        root: the tree's root (the folder on ``sys.path``).
        modules: dotted module name -> file (a package is its ``__init__``).
        script_dirs: folders of scripts that import each other by bare name (``import harness``).
    """

    root: Path
    modules: dict[str, Path]
    script_dirs: tuple[str, ...]

    @classmethod
    def scan(
        cls, root: Path, packages=PACKAGES, script_dirs=SCRIPT_DIRS, scripts=SCRIPTS
    ) -> "Code":
        modules = {}
        for top in (*packages, *script_dirs):
            for path in sorted((root / top).rglob("*.py")):
                parts = path.relative_to(root).with_suffix("").parts
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                modules[".".join(parts)] = path
        for script in scripts:
            modules[Path(script).stem] = root / script
        return cls(root, modules, tuple(script_dirs))

    def tree(self, name: str) -> ast.Module:
        path = self.modules[name]
        return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))

    def resolve(self, name: str, node: ast.Import | ast.ImportFrom) -> list[str]:
        """Project modules an import statement of module ``name`` loads (dotted names).

        ``from pkg import x`` is module ``pkg.x`` when that is a module, else ``pkg`` itself;
        ``import a.b.c`` is the longest project prefix of ``a.b.c``; a bare ``import harness`` in
        a script folder is the script beside it. Other packages' modules are left out.
        """
        path = self.modules[name]
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".") if package else []
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" if base else alias.name for alias in node.names]
            targets = [t if t in self.modules else base for t in targets]
        out = []
        for target in targets:
            sibling = f"{package}.{target}"
            if (
                package in self.script_dirs
                and target not in self.modules
                and sibling in self.modules
            ):
                target = sibling
            while target and target not in self.modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.append(target)
        return out

    def import_graph(self) -> dict[str, set[str]]:
        """Module -> the project modules it imports (anywhere in its body)."""
        graph = {}
        for name in self.modules:
            deps = set()
            for node in ast.walk(self.tree(name)):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    deps.update(self.resolve(name, node))
            graph[name] = deps
        return graph

    def function_imports(self, allowlist=FUNCTION_IMPORT_ALLOWLIST) -> list[str]:
        """``file:line: <statement> (in <function>)`` for each import inside a function body.

        Imports of a module in ``allowlist`` (or below it) are left out.
        """

        def allowed(target: str) -> bool:
            return any(target == a or target.startswith(a + ".") for a in allowlist)

        found = []
        for name, path in self.modules.items():
            for func, node in _imports_in_functions(self.tree(name)):
                if isinstance(node, ast.Import):
                    targets = [alias.name for alias in node.names]
                else:
                    targets = [node.module or ""]
                targets += self.resolve(name, node)
                if not any(allowed(t) for t in targets):
                    rel = path.relative_to(self.root).as_posix()
                    found.append(f"{rel}:{node.lineno}: {ast.unparse(node)} (in {func})")
        return sorted(found)


def _imports_in_functions(tree: ast.AST, func: str | None = None):
    """``(innermost function name, import node)`` of every import inside a function."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield from _imports_in_functions(node, node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            if func is not None:
                yield func, node
        else:
            yield from _imports_in_functions(node, func)


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected group of modules (Tarjan)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1 or v in graph.get(v, ()):
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_in(group, graph) for group in groups]


def _cycle_in(group: set[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest cycle through the alphabetically first module of ``group`` (breadth first)."""
    start = min(group)
    parents = {start: None}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & group):
                if w == start:
                    path = [v]
                    while parents[path[-1]] is not None:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if w not in parents:
                    parents[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start} in {sorted(group)}")


def import_blocked(module_names, blocked=BLOCKED, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Imports ``module_names`` in a fresh interpreter where importing ``blocked`` raises."""
    code = textwrap.dedent(
        f"""
        import importlib, importlib.abc, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] in {tuple(blocked)!r}:
                    raise ImportError(f"{{name}} is blocked: this module must not need it")
                return None

        sys.meta_path.insert(0, Block())
        for name in {tuple(module_names)!r}:
            importlib.import_module(name)
        loaded = sorted(m for m in sys.modules if m.partition(".")[0] in {tuple(blocked)!r})
        assert not loaded, loaded
        """
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300
    )


# ----------------------------------------------------------------------------------------------
# The project.


def test_no_import_cycles():
    cycles = find_cycles(Code.scan(ROOT).import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_imports_inside_functions():
    offenders = Code.scan(ROOT).function_imports()
    assert not offenders, (
        "import statements inside functions (allowed only for the optional heavy dependencies "
        f"{FUNCTION_IMPORT_ALLOWLIST}):\n" + "\n".join(offenders)
    )


def test_file_formats_and_util_import_without_tensorflow_or_jax():
    result = import_blocked(TF_FREE_MODULES)
    assert result.returncode == 0, result.stderr[-3000:]


# ----------------------------------------------------------------------------------------------
# The checkers find what is planted.


def _plant(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_checkers_find_planted_cycles_and_function_imports(tmp_path):
    _plant(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from pkg import b\n",
            "pkg/b.py": "from .sub import c\n",
            "pkg/sub/__init__.py": "",
            "pkg/sub/c.py": "import pkg.a\n",
            "pkg/d.py": "from . import e\n",
            "pkg/e.py": "def f():\n    from pkg.d import X\n    import torch\n",
            "pkg/ok.py": "import numpy\nfrom pkg.sub import c\n",
            "pkg/self.py": "import pkg.self\n",
            "pkg/sub/up.py": "from .. import ok\nfrom ..sub import c as c_module\n",
            "bench/harness.py": (
                "class C:\n    def m(self):\n        def g():\n            from pkg import ok\n"
            ),
            "bench/run.py": "import harness\nimport pkg.sub.c\n",
        },
    )
    code = Code.scan(tmp_path, packages=("pkg",), script_dirs=("bench",), scripts=())
    graph = code.import_graph()
    assert graph["bench.run"] == {"bench.harness", "pkg.sub.c"}
    assert graph["pkg.ok"] == {"pkg.sub.c"}
    assert graph["pkg.self"] == set()  # a module importing itself is no cycle
    assert graph["pkg.sub.up"] == {"pkg.ok", "pkg.sub.c"}
    assert graph["pkg.d"] == {"pkg.e"} and graph["pkg.e"] == {"pkg.d"}
    cycles = find_cycles(graph)
    assert sorted(cycles) == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"], ["pkg.d", "pkg.e", "pkg.d"]]
    assert code.function_imports(allowlist=("torch",)) == [
        "bench/harness.py:4: from pkg import ok (in g)",
        "pkg/e.py:2: from pkg.d import X (in f)",
    ]
    assert len(code.function_imports(allowlist=())) == 3


def test_blocked_import_fails_for_a_module_that_needs_jax(tmp_path):
    _plant(tmp_path, {"needs_jax.py": "import jax.numpy\n", "plain.py": "import json\n"})
    assert import_blocked(["plain"], cwd=tmp_path).returncode == 0
    result = import_blocked(["plain", "needs_jax"], cwd=tmp_path)
    assert result.returncode != 0 and "jax is blocked" in result.stderr


# Distribution of each third-party import name the metric part may use.
_DISTRIBUTIONS = {
    "numpy": "numpy",
    "scipy": "scipy",
    "cv2": "opencv-python-headless",
    "PIL": "pillow",
    "absl": "absl-py",
}
METRIC_PACKAGES = ("intrakd_jax.evaluation", "data_pipelines.formats")


def _third_party_imports(code: Code, start: list[str]) -> dict[str, set[str]]:
    """Top-level third-party import names of ``start`` and every project module they import."""
    graph = code.import_graph()
    seen, todo = set(), list(start)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(graph[name])
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    found: dict[str, set[str]] = {}
    for name in seen:
        for node in ast.walk(code.tree(name)):
            if isinstance(node, ast.Import):
                tops = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                tops = [(node.module or "").split(".")[0]]
            else:
                continue
            for top in tops:
                if top not in stdlib and top not in {m.split(".")[0] for m in code.modules}:
                    found.setdefault(top, set()).add(name)
    return found


def test_the_base_install_covers_the_metric_part():
    """`pip install .` (no extras) must be enough for the metrics and their command lines."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {d.split(">")[0].split("=")[0].split("<")[0].strip() for d in project["dependencies"]}
    code = Code.scan(ROOT)
    start = [m for m in code.modules if m.startswith(METRIC_PACKAGES)]
    used = _third_party_imports(code, [m for m in start if "device" not in m])
    missing = {
        top: sorted(mods) for top, mods in used.items() if _DISTRIBUTIONS.get(top) not in base
    }
    assert not missing, f"third-party imports of the metric part not in pyproject's base: {missing}"
    for entry in project["scripts"].values():
        module = entry.split(":")[0]
        assert module in start, f"console script {entry} is outside the metric part"
