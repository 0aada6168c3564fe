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


# ---------------------------------------------------------------------------------------------------
# What a model file holds (DESIGN.md, "The layout"): the method in the paper's order, and none of the edges:
# no processes (torch.distributed, DistributedDataParallel: training/edges.py wraps and unwraps), no input
# validation (UserError: the commands and the runtime check what a user gives), no file writes (the runtime
# writes atomically, the commands decide where). Each is read from the file's syntax tree; each checker is
# first shown a source with the pattern, so a check that passes is one that could have failed.
# ---------------------------------------------------------------------------------------------------

def model_sources() -> dict[str, str]:
    sources = {}
    for name in sorted(MODEL_FILES):
        with open(path_of(name), encoding="utf-8") as f:
            sources[name] = f.read()
    return sources


def names_in(tree) -> list[tuple[int, str]]:
    """(line, identifier) of every name the code uses or defines: variables, attributes, imported names and
    their aliases, classes, functions, arguments."""
    found = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Name):
            found.append((line, node.id))
        elif isinstance(node, ast.Attribute):
            found.append((line, node.attr))
        elif isinstance(node, ast.alias):
            found += [(line, node.name.split(".")[-1])] + ([(line, node.asname)] if node.asname else [])
        elif isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            found.append((line, node.name))
        elif isinstance(node, ast.arg):
            found.append((line, node.arg))
    return found


def distributed_uses(source: str) -> list[tuple[int, str]]:
    """Where `source` reaches torch.distributed: an import of it (plain, from, aliased, importlib's), an
    attribute `.distributed`, the usual alias `dist`, or DistributedDataParallel."""
    tree = ast.parse(source)
    found = [(0, m) for m in imported_modules(source) if m == "torch.distributed" or m.startswith("torch.distributed.")]
    found += [(line, name) for line, name in names_in(tree)
              if name in ("distributed", "dist", "DistributedDataParallel")]
    return found


def validation_uses(source: str) -> list[tuple[int, str]]:
    """Where `source` names UserError (imported, raised, caught, defined): a model file validates no input."""
    return [(line, name) for line, name in names_in(ast.parse(source)) if name == "UserError"]


WRITE_MODE = set("wax+")                       # open()'s modes that create, truncate, append or update
WRITE_FLAGS = {"O_WRONLY", "O_RDWR", "O_CREAT", "O_APPEND", "O_TRUNC"}
WRITER_METHODS = {"write", "writelines", "write_text", "write_bytes"}
WRITER_FUNCTIONS = {"write_atomically", "save_checkpoint", "write_bytes"}
MODULE_WRITERS = {"torch": {"save"}, "np": {"save", "savez", "savez_compressed", "savetxt"},
                  "numpy": {"save", "savez", "savez_compressed", "savetxt"}}


def file_writes(source: str) -> list[tuple[int, str]]:
    """Where `source` writes a file: open() with a writing mode (or a mode it cannot read), os.open with a
    writing flag, torch.save / numpy's savers (also imported by name), a .write(...) or .write_text(...) call,
    or the project's writers (write_atomically, save_checkpoint, write_bytes)."""
    tree = ast.parse(source)
    savers = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
              and node.module in MODULE_WRITERS for alias in node.names if alias.name in MODULE_WRITERS[node.module]}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f, line = node.func, node.lineno
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
        owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else None
        if name == "open" and owner != "os":
            mode = next((k.value for k in node.keywords if k.arg == "mode"), None)
            mode = node.args[1] if len(node.args) > 1 else mode
            if mode is not None and not (isinstance(mode, ast.Constant) and isinstance(mode.value, str)
                                         and not WRITE_MODE & set(mode.value)):
                found.append((line, "open for writing"))
        elif name == "open" and owner == "os":
            flags = {n for a in node.args[1:2] for _, n in names_in(a)}
            if flags & WRITE_FLAGS:
                found.append((line, "os.open for writing"))
        elif owner in MODULE_WRITERS and name in MODULE_WRITERS[owner]:
            found.append((line, f"{owner}.{name}"))
        elif isinstance(f, ast.Name) and name in savers:
            found.append((line, name))
        elif isinstance(f, ast.Attribute) and name in WRITER_METHODS:
            found.append((line, f".{name}()"))
        elif name in WRITER_FUNCTIONS:
            found.append((line, name))
    return found


def test_the_distributed_checker_catches_every_way_in():
    caught = ["import torch.distributed as dist\n", "import torch.distributed\n", "from torch import distributed\n",
              "from torch.distributed import all_reduce\n", "import torch\ntorch.distributed.all_reduce(x)\n",
              "def f(t):\n    dist.broadcast(t, src=0)\n",
              "import importlib\nimportlib.import_module('torch.distributed')\n",
              "from torch.nn.parallel import DistributedDataParallel\n",
              "m = torch.nn.parallel.DistributedDataParallel(m)\n"]
    for source in caught:
        assert distributed_uses(source), source
    assert distributed_uses("import torch\nimport torch.nn as nn\ndistance = torch.cdist(a, b)\n") == []


def test_the_validation_checker_catches_user_error_anywhere():
    caught = ["from ground.runtime import UserError\n", "from ground import runtime\nraise runtime.UserError('no')\n",
              "try:\n    f()\nexcept UserError:\n    pass\n", "class UserError(Exception):\n    pass\n"]
    for source in caught:
        assert validation_uses(source), source
    assert validation_uses("raise ValueError('a user error: span_len needs span masks')\n") == []


def test_the_file_write_checker_catches_writes_and_lets_reads_pass():
    caught = ["open(p, 'w').write(s)\n", "with open(p, mode='ab') as f:\n    pass\n", "open(p, 'r+')\n",
              "open(p, m)\n", "import torch\ntorch.save(sd, p)\n", "from torch import save\nsave(sd, p)\n",
              "import numpy as np\nnp.save(p, a)\n", "sys.stdout.write('x')\n", "path.write_text('x')\n",
              "write_atomically(p, b)\n", "runtime.save_checkpoint(ckpt, p)\n",
              "import os\nfd = os.open(p, os.O_WRONLY | os.O_CREAT)\n"]
    for source in caught:
        assert file_writes(source), source
    reads = ("open(p)\nopen(p, 'rb')\nwith open(p, encoding='utf-8') as f:\n    f.read()\n"
             "torch.load(p, weights_only=True)\nos.open(p, os.O_RDONLY)\nrewrite(x)\nstate.save\n")
    assert file_writes(reads) == []


def test_model_files_hold_no_processes_no_input_validation_and_no_file_writes():
    for name, source in model_sources().items():
        assert distributed_uses(source) == [], f"{name}.py reaches torch.distributed: {distributed_uses(source)}"
        assert validation_uses(source) == [], f"{name}.py validates input with UserError: {validation_uses(source)}"
        assert file_writes(source) == [], f"{name}.py writes files: {file_writes(source)}"
