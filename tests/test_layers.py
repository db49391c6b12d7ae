"""The shape of the code, checked: no import cycle inside attnviz/, imports only go down the
layers (docs/architecture.md), nothing below attnviz/ui imports Streamlit, and no file of the
repository refers to a path outside it.

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


# the layers of docs/architecture.md, top to bottom; a listed module may import its own layer
# and those below it. Modules not listed (the command line, the lab, notebooks' helpers) sit on
# top of the backend: they may import any of it, but not the Streamlit blocks of attnviz.ui.
LAYERS = {"attnviz.ui": 3, "attnviz.viz": 2, "attnviz.analysis": 1,
          **{f"attnviz.{m}": 0 for m in ("result", "capture", "recorder", "models", "inputs", "limits", "jobs", "cache",
                                         "errors", "device", "samples")}}


def layer(module: str) -> int | None:
    for prefix, level in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            return level
    return None


def test_imports_go_down_the_layers():
    """ui > viz > analysis > the core (result, capture, models ...): nothing imports a layer
    above its own, and no module outside attnviz.ui imports it."""
    wrong = []
    for module, targets in graph().items():
        here = layer(module)
        for target in targets:
            there = layer(target)
            if there is not None and there > (here if here is not None else 2):
                wrong.append(f"{module} imports {target}")
    assert not wrong, "\n".join(sorted(wrong))


def test_analysis_is_pure_numpy():
    wrong = [f"{module_name(p)} imports {m}" for p in (PACKAGE / "analysis").rglob("*.py")
             for m in imports_of(p) if m.split(".")[0] in ("torch", "streamlit", "transformers")]
    assert not wrong, wrong


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
