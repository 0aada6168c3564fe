"""The files import each other like the floors of a house (DESIGN.md): ground/runtime.py at the ground, mel.py
beside it, the model files above that, then the folders' edges, then the commands. Every import counts, the
ones inside functions too: the graph is read from each file's syntax tree, not from what runs. Modules are
named as Python imports them: `specmaskgit` at the root, `training.edges` in a folder."""

import ast
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDERS = sorted(os.path.basename(os.path.dirname(p)) for p in glob.glob(os.path.join(ROOT, "*", "__init__.py")))
ROOT_FILES = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "*.py"))}
PROJECT = ROOT_FILES | {f"{folder}.{os.path.basename(p)[:-3]}" for folder in FOLDERS
                        for p in glob.glob(os.path.join(ROOT, folder, "*.py")) if not p.endswith("__init__.py")}
MODEL_FILES = {"specmaskgit", "vqgan", "vocoder", "clap", "magnet"}
COMMANDS = {"train", "sample", "evaluate", "speed.benchmark"}


def path_of(module: str) -> str:
    return os.path.join(ROOT, *module.split(".")) + ".py"


def imported_modules(source: str) -> set[str]:
    """Every module a file imports, anywhere in it, dotted as Python names it: `from data import toyworld` is
    data.toyworld, `from ground.runtime import X` is ground.runtime (importlib's string calls included)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}    # a module imported from a folder
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module"):
            names |= {c.value for c in ast.walk(node) if isinstance(c, ast.Constant) and isinstance(c.value, str)}
    return names


def project_graph() -> dict[str, set[str]]:
    graph = {}
    for name in PROJECT:
        with open(path_of(name), encoding="utf-8") as f:
            graph[name] = imported_modules(f.read()) & PROJECT - {name}
    return graph


def test_the_parser_sees_imports_inside_functions_and_import_module():
    source = ("import os\nfrom a.b import c\nfrom data import toyworld\ndef f():\n    import lazy\n"
              "    importlib.import_module({'x': 'vqgan'}.get(s, s))\n")
    assert {"os", "a.b", "lazy", "vqgan", "data.toyworld"} <= imported_modules(source)
    assert "c" not in imported_modules(source)


def test_the_root_holds_the_method_and_the_commands_and_every_folder_says_what_it_holds():
    assert len(ROOT_FILES) <= 10, sorted(ROOT_FILES)
    assert MODEL_FILES | {"mel", "train", "sample", "evaluate"} <= ROOT_FILES
    for folder in FOLDERS:
        with open(os.path.join(ROOT, folder, "__init__.py"), encoding="utf-8") as f:
            opening = ast.get_docstring(ast.parse(f.read())) or ""
        assert opening.startswith(f"{folder}/ — "), f"{folder}/__init__.py does not open by saying what it holds"
        for p in glob.glob(os.path.join(ROOT, folder, "*.py")):         # and names every file it holds
            assert p.endswith("__init__.py") or os.path.basename(p) in opening, f"{folder}/ does not name {p}"


def test_no_import_circle_of_any_length():
    graph = project_graph()
    done, path = set(), []

    def visit(node):
        if node in path:
            raise AssertionError("import circle: " + " -> ".join(path[path.index(node):] + [node]))
        if node in done:
            return
        path.append(node)
        for nxt in sorted(graph[node]):
            visit(nxt)
        path.pop()
        done.add(node)

    for name in sorted(graph):
        visit(name)


def test_runtime_is_the_ground_floor():
    assert project_graph()["ground.runtime"] == set()


def test_mel_stands_on_nothing_of_the_project():
    assert project_graph()["mel"] == set()


def test_model_files_import_only_torch_numpy_and_mel():
    for name in sorted(MODEL_FILES):
        allowed = {"mel"} | ({"specmaskgit"} if name == "magnet" else set())
        with open(path_of(name), encoding="utf-8") as f:
            project = imported_modules(f.read()) & PROJECT
        assert project <= allowed, f"{name}.py imports {sorted(project - allowed)}"


def test_no_command_imports_another():
    graph = project_graph()
    for name in sorted(COMMANDS & PROJECT):
        assert not graph[name] & COMMANDS, f"{name} imports {sorted(graph[name] & COMMANDS)}"


def test_only_the_commands_stand_on_the_top_floor():
    """No file below the commands imports one (training/edges.py stands beside train.py, under it)."""
    graph = project_graph()
    for name in sorted(PROJECT - COMMANDS):
        assert not graph[name] & COMMANDS, f"{name} imports {sorted(graph[name] & COMMANDS)}"
