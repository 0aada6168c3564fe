"""The files import each other like the floors of a house (DESIGN.md): runtime.py at the ground, mel.py
above it, the model files above that, then the edges, then the four commands. Every import counts, the
ones inside functions too: the graph is read from each file's syntax tree, not from what runs."""

import ast
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "*.py"))}
MODEL_FILES = {"specmaskgit", "vqgan", "vocoder", "clap", "magnet"} & PROJECT
COMMANDS = {"train", "sample", "evaluate", "benchmark"}


def imported_modules(source: str) -> set[str]:
    """Top-level names of every module a file imports, anywhere in it (importlib's string calls included)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module"):
            names |= {c.value for c in ast.walk(node) if isinstance(c, ast.Constant) and isinstance(c.value, str)}
    return names


def project_graph() -> dict[str, set[str]]:
    graph = {}
    for name in PROJECT:
        with open(os.path.join(ROOT, name + ".py"), encoding="utf-8") as f:
            graph[name] = imported_modules(f.read()) & PROJECT - {name}
    return graph


def test_the_parser_sees_imports_inside_functions_and_import_module():
    source = "import os\nfrom a.b import c\ndef f():\n    import lazy\n    importlib.import_module({'x': 'vqgan'}.get(s, s))\n"
    assert {"os", "a", "lazy", "vqgan"} <= imported_modules(source) & {"os", "a", "lazy", "vqgan", "c", "f"}
    assert "c" not in imported_modules(source)                      # from a.b import c: the module is a


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
    assert project_graph()["runtime"] == set()


def test_mel_stands_on_runtime_alone():
    assert project_graph()["mel"] <= {"runtime"}


def test_model_files_import_only_torch_numpy_and_mel():
    for name in sorted(MODEL_FILES):
        allowed = {"mel"} | ({"specmaskgit"} if name == "magnet" else set())
        with open(os.path.join(ROOT, name + ".py"), encoding="utf-8") as f:
            project = imported_modules(f.read()) & PROJECT
        assert project <= allowed, f"{name}.py imports {sorted(project - allowed)}"


def test_no_command_imports_another():
    graph = project_graph()
    for name in sorted(COMMANDS & PROJECT):
        assert not graph[name] & COMMANDS, f"{name}.py imports {sorted(graph[name] & COMMANDS)}"


def test_only_the_commands_stand_on_the_top_floor():
    """No file below the commands imports one (training_edges.py stands beside train.py, under it)."""
    graph = project_graph()
    for name in sorted(PROJECT - COMMANDS):
        assert not graph[name] & COMMANDS, f"{name}.py imports {sorted(graph[name] & COMMANDS)}"
