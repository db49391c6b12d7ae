"""The shape of the code, checked: no import cycle inside attnviz/, every module placed in a
layer and imports only going down the layers (docs/architecture.md), analysis and viz free of
torch, nothing below attnviz/ui importing Streamlit, no module importing another's private
names, and no file of the repository referring to a path outside it.

Imports are read from the source (every ``import`` statement, those inside functions too),
so a cycle hidden behind a function-level import counts as one."""
from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "attnviz"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names; relative imports resolved): ``import a.b``
    names a.b; ``from a import b`` names a (its __init__ runs, with whatever it imports) and
    a.b when that is a module."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}  # "from attnviz.models import store"
    return found


def graph() -> dict[str, set[str]]:
    """attnviz module -> the attnviz modules it imports."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()}


def test_no_import_cycle_inside_attnviz():
    edges = graph()
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


# the layers of docs/architecture.md, top to bottom: a module may import its own layer and those
# below it. A name places the module of that name and, when it is a package (a folder), every
# module under it (the deepest name that matches wins; the root package places only itself).
# attnviz.jobs (the one scheduler every heavy computation runs in) is base: capture, mixing,
# explain and the lab all submit to it.
LAYERS = [
    ("ui", ["attnviz.ui"]),  # Streamlit blocks and pages' views
    ("command line", ["attnviz.cli", "attnviz.__main__"]),
    ("outputs", ["attnviz.figures", "attnviz.export", "attnviz.report"]),  # figures for notebooks, files
    ("viz", ["attnviz.viz"]),  # pure figure builders
    ("runs", ["attnviz", "attnviz.batch", "attnviz.compare", "attnviz.probes", "attnviz.explain", "attnviz.lab",
              "attnviz.mixing"]),
    ("analysis", ["attnviz.analysis"]),  # pure numpy
    ("capture", ["attnviz.capture", "attnviz.families", "attnviz.recording", "attnviz.tokens", "attnviz.pixels",
                 "attnviz.recorder"]),
    ("models", ["attnviz.models"]),  # registry, store, converters, loader: never the lab above
    ("results", ["attnviz.result", "attnviz.lazy"]),
    ("base", ["attnviz.errors", "attnviz.inputs", "attnviz.limits", "attnviz.cache", "attnviz.device", "attnviz.samples",
              "attnviz.jobs"]),
]
LEVEL = {name: len(LAYERS) - i for i, (_, names) in enumerate(LAYERS) for name in names}
LAYER_NAME = {name: layer for layer, names in LAYERS for name in names}


def placed_by(module: str) -> str | None:
    """The name of LAYERS that places ``module`` (None: unplaced)."""
    matches = [name for name in LEVEL if module == name or (name != "attnviz" and module.startswith(name + "."))]
    return max(matches, key=len, default=None)


def layer(module: str) -> int | None:
    name = placed_by(module)
    return None if name is None else LEVEL[name]


def test_every_module_is_placed_in_a_layer():
    unplaced = sorted(m for m in graph() if placed_by(m) is None)
    assert not unplaced, ("modules in no layer (add them, or their package, to LAYERS and to docs/architecture.md): "
                          + ", ".join(unplaced))


def test_imports_go_down_the_layers():
    """Each module imports only its own layer and those below: ui > command line > outputs >
    viz > runs > analysis > capture > models > results > base (so the store never imports the
    lab, analysis never the figures, the core never any of them)."""
    wrong = []
    for module, targets in graph().items():
        for target in targets:
            if None not in (layer(module), layer(target)) and layer(target) > layer(module):  # unplaced: see above
                wrong.append(f"{module} ({LAYER_NAME[placed_by(module)]}) imports {target} "
                             f"({LAYER_NAME[placed_by(target)]})")
    assert not wrong, "\n".join(sorted(wrong))


def test_the_layers_are_those_of_the_architecture_page():
    """The placements above: the package rules, and the rules of docs/architecture.md."""
    assert placed_by("attnviz.analysis.anything_new") == "attnviz.analysis"
    assert placed_by("attnviz.viz.anything_new") == "attnviz.viz"
    assert placed_by("attnviz.ui.anything_new") == "attnviz.ui"
    assert placed_by("attnviz.anything_new") is None, "the root package places only itself"
    assert layer("attnviz.models.store") < layer("attnviz.lab.custom"), "the store never imports the lab"
    assert layer("attnviz.analysis.stats") < layer("attnviz.viz.text") < layer("attnviz.ui.text")


def third_party(folder: Path) -> list[str]:
    """``module imports x`` for every import of torch, transformers or streamlit under ``folder``."""
    return [f"{module_name(p)} imports {m}" for p in folder.rglob("*.py")
            for m in imports_of(p) if m.split(".")[0] in ("torch", "streamlit", "transformers")]


def test_analysis_is_pure_numpy():
    wrong = third_party(PACKAGE / "analysis")
    assert not wrong, wrong


def test_viz_draws_without_torch_or_streamlit():
    wrong = third_party(PACKAGE / "viz")
    assert not wrong, wrong


def private_imports(path: Path, package: str) -> list[str]:
    """``line imports module._name`` for each name with a leading underscore that the file
    ``path`` (of ``package``, for relative imports) imports from an attnviz module
    (``from attnviz.capture import _encode``); dunder names aside."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.ImportFrom):
            continue
        base = node.module or ""
        if node.level:
            base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
        if base.split(".")[0] == "attnviz":
            found += [f"{node.lineno} imports {base}.{a.name}" for a in node.names
                      if a.name.startswith("_") and not a.name.startswith("__")]
    return found


def test_no_module_imports_another_modules_private_names():
    """What two modules share is public and documented: attnviz/ and bench/ import no
    underscore name from an attnviz module."""
    wrong = []
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "bench").rglob("*.py")]:
        package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
        wrong += [f"{path.relative_to(ROOT)}:{found}" for found in private_imports(path, package)]
    assert not wrong, "\n".join(wrong)


def test_the_private_import_check_catches_one(tmp_path):
    bad = tmp_path / "probe.py"
    bad.write_text("from attnviz.capture import _stack\nfrom attnviz.result import __doc__\nfrom .lazy import _run\n")
    assert private_imports(bad, "attnviz") == ["1 imports attnviz.capture._stack", "3 imports attnviz.lazy._run"]


def test_nothing_below_ui_imports_streamlit():
    wrong = [module_name(p) for p in PACKAGE.rglob("*.py")
             if not module_name(p).startswith("attnviz.ui") and any(
                 m == "streamlit" or m.startswith("streamlit.") for m in imports_of(p))]
    assert not wrong, wrong


def test_no_file_refers_to_a_path_outside_the_repository():
    """The repository stands alone: no tracked file points at a folder beside it (a relative
    path that climbs out of the repository into a sibling folder)."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    climb = re.compile(r"(?<![\w./])((?:\.\./)+)[A-Za-z_][\w-]*/")  # one or more "..", then a folder
    offenders = []
    for name in tracked:
        path = ROOT / name
        if path.suffix in (".png", ".jpg", ".npz", ".safetensors", ".gguf", ".onnx", ".zip") or not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        depth = len(Path(name).parts) - 1  # from docs/a.md, "../x/" is still inside the repository
        offenders += [f"{name}:{i + 1}: {line.strip()[:100]}" for i, line in enumerate(text.splitlines())
                      if any(len(m.group(1)) // 3 > depth for m in climb.finditer(line))]
    assert not offenders, "\n".join(offenders)



# -- session-state and URL keys -------------------------------------------------------------------
KEYS_MODULE = PACKAGE / "ui" / "keys.py"
STATE = ("session_state", "query_params")
READ_BY_NAME = ("remember", "url_int", "url_choice")  # ui.common helpers whose first argument is a key


def _is_state(node: ast.AST) -> bool:
    """``st.session_state`` or ``st.query_params`` (or a bare name of them)."""
    return (isinstance(node, ast.Attribute) and node.attr in STATE) or (isinstance(node, ast.Name) and node.id in STATE)


def _text(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def quoted_keys(path: Path) -> list[tuple[str, int]]:
    """(key, line) of every quoted string ``path`` uses as a session-state or URL key: an index
    of, or a get/pop/setdefault on, or an ``in`` test of st.session_state or st.query_params; the
    first argument of remember, url_int or url_choice; and a widget's ``key=``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[ast.AST | None] = []
        if isinstance(node, ast.Subscript) and _is_state(node.value):
            names.append(node.slice)
        elif isinstance(node, ast.Compare) and any(_is_state(c) for c in node.comparators):
            names.append(node.left)
        elif isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Attribute) and f.attr in ("get", "pop", "setdefault") and _is_state(f.value):
                names.append(node.args[0] if node.args else None)
            if (f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)) in READ_BY_NAME:
                names.append(node.args[0] if node.args else None)
            names += [k.value for k in node.keywords if k.arg == "key"]
        found += [(_text(n), n.lineno) for n in names if _text(n) is not None]
    return found


def shared_keys() -> dict[str, str]:
    """The keys of attnviz/ui/keys.py: {value: constant name}."""
    tree = ast.parse(KEYS_MODULE.read_text())
    return {node.value.value: node.targets[0].id for node in tree.body
            if isinstance(node, ast.Assign) and _text(node.value) is not None}


def key_problems(files: list[Path]) -> list[str]:
    """Quoted keys that name a key of ui/keys.py (use its constant), or that two files both
    use (one owns it: define it in ui/keys.py, or let the owner expose a function)."""
    shared, owner, problems = shared_keys(), {}, []
    for path in files:
        name = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
        for key, line in quoted_keys(path):
            if key in shared:
                problems.append(f"{name}:{line}: '{key}' is keys.{shared[key]}")
            elif owner.setdefault(key, name) != name:
                problems.append(f"{name}:{line}: '{key}' is also used by {owner[key]}")
    return problems


def ui_files() -> list[Path]:
    return sorted(p for p in [*(PACKAGE / "ui").glob("*.py"), *(ROOT / "pages").glob("*.py"), ROOT / "app.py"]
                  if p != KEYS_MODULE)


def test_session_and_url_keys_are_defined_once():
    """No page or ui module names another's session-state or URL key by a quoted string."""
    problems = key_problems(ui_files())
    assert not problems, "\n".join(problems)


def test_the_key_check_catches_a_key_written_by_string(tmp_path):
    """The check above can fail: a module that writes the model by its string, or uses a widget
    key of another module, is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text('import streamlit as st\nst.session_state["model"] = "x"\nst.slider("a", key="_image_opacity")\n')
    problems = key_problems([PACKAGE / "ui" / "overlay.py", bad])
    assert [p.split(": ", 1)[1] for p in problems] == [
        "'model' is keys.MODEL", "'_image_opacity' is also used by attnviz/ui/overlay.py"], problems
