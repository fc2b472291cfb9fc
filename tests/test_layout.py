"""The repository's shape: imports run one way, and nothing points outside the repository.

- No import cycle among the package's modules (``litelora_fast`` and ``litelora_fast.kernels``),
  counting imports inside functions too: every dependency arrow points one way.
- The docs the code links to exist, and no file refers to the design notes that live outside the
  repository (the math and the contract are in docs/MATH.md).
- docs/DESIGN.md's file table names every module of the package, and only modules that exist.
"""
import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = {"litelora_fast": ROOT / "litelora_fast", "litelora_fast.kernels": ROOT / "kernels"}


def _modules() -> dict:
    mods = {}
    for pkg, root in PACKAGES.items():
        for f in root.rglob("*.py"):
            parts = [p for p in f.relative_to(root).with_suffix("").parts if p != "__init__"]
            mods[".".join([pkg, *parts])] = f
    return mods


def _import_graph() -> dict:
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = here[:len(here) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    deps.add(sub if sub in mods else target)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def _cycles(graph: dict) -> list:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    graph = _import_graph()
    assert "litelora_fast.op.ops" in graph and "litelora_fast.op.op_math" in graph["litelora_fast.op.ops"]
    assert _cycles(graph) == []


def test_the_cycle_check_can_fail():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _tracked_text_files():
    for path in ROOT.rglob("*"):
        if any(part in (".venv", ".git", "out", "__pycache__", ".pytest_cache", ".benchmarks")
               or part.endswith(".egg-info") for part in path.parts):
            continue
        if path.is_file() and path.suffix in (".py", ".md", ".sh", ".cfg", ".ini", ".toml"):
            yield path


def test_nothing_refers_outside_the_repository():
    outside = re.compile(r"SPEC section|SPEC\.md|\.\./shared|shared/SPEC")
    offenders = [str(p.relative_to(ROOT)) for p in _tracked_text_files()
                 if p.name != "test_layout.py" and outside.search(p.read_text(errors="ignore"))]
    assert offenders == []


def test_doc_links_resolve():
    link = re.compile(r"docs/(MATH|DESIGN)\.md")
    for path in _tracked_text_files():
        for m in link.finditer(path.read_text(errors="ignore")):
            assert (ROOT / "docs" / f"{m.group(1)}.md").exists(), (path, m.group(0))


def test_design_file_table_matches_the_tree():
    table = set(re.findall(r"^\| `([\w/]+\.py)` \|", (ROOT / "docs" / "DESIGN.md").read_text(),
                           re.M))
    tree = {str(p.relative_to(ROOT)) for root in PACKAGES.values() for p in root.rglob("*.py")
            if p.name != "__init__.py"}
    assert sorted(tree - table) == [], "modules missing from docs/DESIGN.md's table"
    assert sorted(table - tree) == [], "docs/DESIGN.md names files that do not exist"


def test_import_does_not_load_the_method():
    """``import litelora_fast`` leaves LiteLoRA's subpackage out; its names still resolve lazily."""
    import subprocess
    import sys
    code = ("import sys, litelora_fast as llf; "
            "print(sorted(m for m in sys.modules if m.startswith('litelora_fast.litelora'))); "
            "print(llf.ContinualLearner.__module__, llf.cl.__name__, llf.litelora.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == [
        "[]", "litelora_fast.litelora.learner litelora_fast.litelora.cl litelora_fast.litelora"]


def test_no_library_module_imports_the_method():
    graph = _import_graph()
    method = "litelora_fast.litelora"
    assert f"{method}.learner" in graph
    users = sorted(m for m, deps in graph.items() if not m.startswith(method)
                   and any(d == method or d.startswith(method + ".") for d in deps))
    assert users == []


# The folders, bottom to top: a module may import its own folder and the folders below it.
# ``settings`` is the ground every folder stands on (it imports nothing of the package).
FOLDERS = ("litelora_fast.kernels", "litelora_fast.op", "litelora_fast.module",
           "litelora_fast.models")
GROUND = "litelora_fast.settings"


def _folder(mod: str):
    return next((f for f in FOLDERS if mod == f or mod.startswith(f + ".")), None)


def _against_the_folder_order(graph: dict) -> list:
    bad = []
    for mod, deps in graph.items():
        here = _folder(mod)
        for dep in deps:
            if mod == GROUND:
                bad.append((mod, dep))
            elif here is not None and dep != GROUND and (
                    _folder(dep) is None or FOLDERS.index(_folder(dep)) > FOLDERS.index(here)):
                bad.append((mod, dep))
    return sorted(bad)


def test_imports_run_one_way_through_the_folders():
    """models -> module -> op -> kernels, each folder on ``settings``; nothing in a folder
    imports upward, nor the package face, the method, the tools or ``redundancy``."""
    graph = _import_graph()
    for folder in FOLDERS:
        assert any(_folder(m) == folder for m in graph), f"no module in {folder}"
    assert _against_the_folder_order(graph) == []


def test_the_folder_check_can_fail():
    planted = {"litelora_fast.op.ops": {"litelora_fast.module.layer"},
               "litelora_fast.module.layer": {"litelora_fast.op.ops", "litelora_fast.settings"},
               "litelora_fast.models.inject": {"litelora_fast.tools.tune"},
               "litelora_fast.settings": {"litelora_fast.op.ops"}}
    assert _against_the_folder_order(planted) == [
        ("litelora_fast.models.inject", "litelora_fast.tools.tune"),
        ("litelora_fast.op.ops", "litelora_fast.module.layer"),
        ("litelora_fast.settings", "litelora_fast.op.ops")]


# Files the docs name in other repositories (PEFT's test suite, run by tools/run_peft_suite.py).
OTHER_REPOSITORIES = {"test_custom_models.py", "tests/test_custom_models.py"}


def _named_files(text: str) -> set:
    """Source files a doc names: paths (``a/b.py``) and bare names (``layer.py``)."""
    return set(re.findall(r"(?<![\w/.-])((?:[\w.-]+/)*[\w-]+\.(?:py|sh))(?![\w/])", text))


def test_every_file_the_docs_name_exists():
    """Each ``.py``/``.sh`` file named in README.md, docs/, benchmarks/README.md and
    examples/README.md exists: a path from the repository root (or the doc's folder, or the
    package), or a bare name that some file of the tree has."""
    docs = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", ROOT / "examples" / "README.md",
            *sorted((ROOT / "docs").glob("*.md"))]
    basenames = {p.name for p in _tracked_text_files()}
    missing = []
    for doc in docs:
        for name in sorted(_named_files(doc.read_text())):
            if name in OTHER_REPOSITORIES:
                continue
            if "/" in name:
                found = any((base / name).exists()
                            for base in (ROOT, doc.parent, ROOT / "litelora_fast"))
            else:
                found = name in basenames
            if not found:
                missing.append(f"{doc.relative_to(ROOT)}: {name}")
    assert missing == []


def test_the_docs_check_can_fail():
    assert _named_files("see `kernels/forward.py` and layer.py, not out/demo.json") == {
        "kernels/forward.py", "layer.py"}
