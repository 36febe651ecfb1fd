"""The package's import graph points one way: no circle between modules (counting imports inside functions), each
module imports only modules of its own layer or below (``LAYERS``, the map in docs/ARCHITECTURE.md), the library
never imports ``data_prep``, and modules import each other at module level, not inside functions."""

import ast
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("cogito_jax", "data_prep", "launch")
# The library's layers, bottom first: a module's prefix names its layer (the longest prefix that matches).
LAYERS = (
    ("base", ("cogito_jax.errors", "cogito_jax.log", "cogito_jax.jsonl", "cogito_jax.audio", "cogito_jax.metrics")),
    ("config", ("cogito_jax.config",)),
    ("sharding", ("cogito_jax.sharding",)),
    ("models", ("cogito_jax.models", "cogito_jax.convert")),
    ("data", ("cogito_jax.data",)),
    ("sampling", ("cogito_jax.sampling",)),
    ("train", ("cogito_jax.train",)),
    ("eval", ("cogito_jax.eval", "cogito_jax.distill", "cogito_jax.judge", "cogito_jax.rl")),
    ("entry points", ("cogito_jax.cli", "cogito_jax.sample", "cogito_jax.evaluate", "cogito_jax.demo",
                      "cogito_jax.export", "cogito_jax.show_config", "cogito_jax.sweeps", "cogito_jax.train.__main__",
                      "cogito_jax.distill.__main__", "cogito_jax.rl.__main__")),
    ("data_prep", ("data_prep",)),
    ("launch", ("launch",)),
)
# Modules that import project modules inside a function, and why they must.
LATE_IMPORTS = {
    "launch.aot_compile": "--topology cpu:N sets XLA_FLAGS before JAX is first imported, and every project module "
                          "it compiles imports JAX",
}


def _modules() -> dict[str, pathlib.Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in (REPO / pkg).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The project modules an import statement loads (a package's submodule when it names one)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in MODULES]
    base = node.module or ""
    if node.level:
        pkg = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
        pkg = pkg[: len(pkg) - (node.level - 1)]
        base = ".".join(pkg + ([base] if base else []))
    out = []
    for a in node.names:
        sub = f"{base}.{a.name}"
        out.append(sub if sub in MODULES else base)
    return [t for t in out if t in MODULES]


def _graph() -> tuple[dict[str, set[str]], list[tuple[str, int, str]]]:
    """(module -> the project modules it imports anywhere, [(module, line, target) of imports inside functions])."""
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    local = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        top = {id(n) for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
               and not any(isinstance(p, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                           for p in _parents(tree, n))}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for t in _targets(module, node):
                    if t != module:
                        edges[module].add(t)
                        if id(node) not in top:
                            local.append((module, node.lineno, t))
    return edges, local


def _parents(tree: ast.AST, target: ast.AST) -> list[ast.AST]:
    path: list[ast.AST] = []

    def walk(node, stack):
        if node is target:
            path.extend(stack)
            return True
        return any(walk(child, [*stack, node]) for child in ast.iter_child_nodes(node))

    walk(tree, [])
    return path


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


EDGES, LOCAL = _graph()


def test_the_import_graph_has_no_circle():
    assert _cycles(EDGES) == []


def layer_of(module: str) -> int:
    """The index in LAYERS of a module (its longest matching prefix); KeyError for a module no layer holds."""
    best = max(((len(p), i) for i, (_, prefixes) in enumerate(LAYERS) for p in prefixes
                if module == p or module.startswith(p + ".")), default=None)
    if best is None:
        raise KeyError(f"{module} is in no layer: add it to LAYERS (and docs/ARCHITECTURE.md)")
    return best[1]


def test_imports_point_down_the_layers():
    up = sorted((m, t) for m, ts in EDGES.items() if m != "cogito_jax"  # the root package imports nothing
                for t in ts if layer_of(t) > layer_of(m))
    assert up == []


def test_the_library_never_imports_data_prep():
    up = sorted((m, t) for m, ts in EDGES.items() for t in ts
                if m.startswith("cogito_jax") and t.startswith("data_prep"))
    assert up == []


def test_project_modules_are_imported_at_module_level():
    assert [x for x in LOCAL if x[0] not in LATE_IMPORTS] == []
    assert {m for m, _, _ in LOCAL} == set(LATE_IMPORTS)  # an entry above that no longer needs it goes


def test_the_checker_sees_circles_and_imports_inside_functions(tmp_path):
    """The walk above counts an import inside a function and finds a circle through it."""
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(edges) == [["a", "b", "c"]]
    tree = ast.parse("import os\n\ndef f():\n    from cogito_jax import audio\n")
    node = tree.body[1].body[0]
    assert any(isinstance(p, ast.FunctionDef) for p in _parents(tree, node))
    assert _targets("cogito_jax.cli", node) == ["cogito_jax.audio"]
    assert LAYERS[layer_of("cogito_jax.train.__main__")][0] == "entry points"
    assert LAYERS[layer_of("cogito_jax.train.step")][0] == "train"
    assert layer_of("cogito_jax.config") < layer_of("cogito_jax.sharding") < layer_of("cogito_jax.models.attention")


def test_the_architecture_map_names_every_module():
    """docs/ARCHITECTURE.md's layer table has a line for every module (a package's ``*`` line covers its files)."""
    doc = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    rows = {}
    for line in doc.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) == 5 and cells[2].startswith("`"):
            for name in cells[2].replace("`", "").split(","):
                rows[name.strip()] = cells[1]
    missing = []
    for path in MODULES.values():
        rel = str(path.relative_to(REPO))
        if path.name == "__init__.py" or rel in rows or f"{path.parent.relative_to(REPO)}/*" in rows:
            continue
        missing.append(rel)
    assert missing == []
    for name, layer in rows.items():  # the table's layer agrees with LAYERS
        if name.endswith(".py") and not name.endswith("/*"):
            module = name[:-3].replace("/", ".")
            if module in MODULES:
                assert LAYERS[layer_of(module)][0] == layer, name
