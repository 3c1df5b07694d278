"""What an answer cell may not do, checked on its source before it runs (the grader's static pass).

Two kinds of finding, both tied to the answer cell (so they cost the tests that cover it):

* **forbidden**: the cell uses an API the assignment asks the student to write themselves (declared once
  in the solution's metadata, ``{"coursekit": {"forbidden": ["torchvision.ops.nms", "coursekit.boxes"]}}``;
  a module forbids everything under it). Imports, aliases (``import torchvision.ops as O; O.nms``,
  ``f = torchvision.ops; f.nms``) and star imports are resolved.
* **tampering**: the cell reaches for the machinery that would let it fake a grade instead of earning it:
  the IPython shell (``get_ipython``, input transformers, ``run_cell``), magics and shell escapes, code
  built at run time (``exec``, ``eval``, ``compile``, ``__import__``, ``importlib``, ``getattr`` with a
  computed name), the interpreter's internals (``sys.modules``, ``builtins``, frames, ``gc``, ``ctypes``,
  ``inspect``), monkey-patching a module or a dunder attribute, redefining a name the assignment's own
  cells define (a timing helper, a reference function), or a class with a rigged ``__eq__``/``__bool__``.

The cell is parsed after IPython's own transformation, so ``%magic`` and ``!shell`` lines are seen as the
calls they become. Honest answers need none of this; an honest ``import torch`` that the setup cell
also does is fine.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

__all__ = ["Finding", "check_answer", "defined_names", "instructor_imports", "protected_names", "transform_cell"]

# Magics an honest answer may use; their argument is checked as code where it is code.
ALLOWED_MAGICS = {"matplotlib": False, "time": True, "timeit": True}
# Modules whose import alone means the cell is reaching under the kernel.
TAMPER_MODULES = ("IPython", "ipykernel", "importlib", "ctypes", "gc", "inspect", "builtins", "sys", "os",
                  "subprocess", "socket", "multiprocessing", "threading", "signal", "pty", "shutil",
                  "runpy", "code", "codeop", "types", "marshal", "pickle", "dill", "zmq", "jupyter_client",
                  "coursekit.grading", "operator.attrgetter", "operator.methodcaller", "atexit", "faulthandler",
                  "tracemalloc", "sysconfig", "site", "pathlib", "io", "tempfile", "glob", "nbformat", "nbclient",
                  "papermill", "torch.ops", "torch.utils.cpp_extension")
# Safe names from modules above that answers use (``os.path.join`` is not, ``sys`` attributes are not).
TAMPER_CALLS = {"exec", "eval", "compile", "__import__", "globals", "locals", "vars", "get_ipython", "open",
                "breakpoint", "setattr", "delattr", "exit", "quit", "input", "help"}
TAMPER_ATTRS = {"__globals__", "__builtins__", "__code__", "__closure__", "__subclasses__", "__import__",
                "__loader__", "__spec__", "__dict__", "__getattribute__", "__setattr__", "__reduce__",
                "__reduce_ex__", "__class_getitem__", "__mro__", "__bases__", "__base__", "__self__",
                "__func__", "__wrapped__", "f_back", "f_locals", "f_globals", "f_builtins",
                "f_code", "tb_frame", "tb_next", "gi_frame", "cr_frame", "ag_frame", "func_globals",
                "run_cell", "input_transformers_post", "input_transformers_cleanup", "ast_transformers",
                "user_ns", "user_global_ns"}
RIGGED_DUNDERS = {"__eq__", "__ne__", "__bool__", "__float__", "__int__", "__index__", "__array__",
                  "__array_function__", "__array_ufunc__", "__torch_function__", "__torch_dispatch__",
                  "__instancecheck__", "__subclasscheck__", "__getattr__", "__getattribute__", "__del__",
                  "__lt__", "__le__", "__gt__", "__ge__"}


@dataclass(frozen=True)
class Finding:
    """One rule an answer cell breaks."""

    kind: Literal["forbidden", "tampering"]
    line: int  # in the cell, from 1 (0: the cell as a whole)
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"{where}{self.message}"


def transform_cell(source: str) -> str:
    """The Python that IPython would run for ``source`` (magics and ``!`` lines become calls)."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager
    except ModuleNotFoundError:  # pragma: no cover - the grading extra has IPython
        return source
    try:
        return TransformerManager().transform_cell(source)
    except Exception:  # IPython could not tokenize it: parse the raw text (a SyntaxError then fails the cell)
        return source


def protected_names(instructor_sources: Iterable[str], test_sources: Iterable[str]) -> set[str]:
    """The names an answer may not rebind: bound at the top level by the assignment's own cells and read by a
    test cell that does not bind them itself (a timing helper, a data set, a reference function)."""
    free: set[str] = set()
    for tree in _trees(test_sources):
        loaded = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        stored = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
        stored |= {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef)}
        free |= loaded - stored
    return defined_names(instructor_sources) & free


def defined_names(sources: Iterable[str]) -> set[str]:
    """Names bound at the top level of the given cells (assignments, defs, classes, imports)."""
    names: set[str] = set()
    for tree in _trees(sources):
        for node in tree.body:
            names.update(_bound_names(node))
    return names


def _trees(sources: Iterable[str]) -> Iterator[ast.Module]:
    """Each cell parsed as IPython would run it; cells that do not parse are skipped (they fail when run)."""
    for source in sources:
        try:
            yield ast.parse(transform_cell(source))
        except SyntaxError:
            continue


def _bound_names(node: ast.stmt) -> Iterator[str]:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        yield node.name
    elif isinstance(node, ast.Import | ast.ImportFrom):
        for alias in node.names:
            if alias.name != "*":
                yield alias.asname or alias.name.split(".")[0]
    elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        for target in targets:
            for sub in ast.walk(target):
                if isinstance(sub, ast.Name):
                    yield sub.id


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """``a.b.c`` with ``a`` resolved through the cell's import aliases; None when it is not a name chain."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    base = aliases.get(node.id)
    if base is None:
        return None
    return ".".join([base, *reversed(parts)])


def _matches(name: str, patterns: Iterable[str]) -> str | None:
    for pattern in patterns:
        if name == pattern or name.startswith(pattern + "."):
            return pattern
    return None


class _Checker(ast.NodeVisitor):
    def __init__(self, forbidden: list[str], instructor_names: set[str], instructor_imports: dict[str, str]):
        self.forbidden, self.instructor_names = forbidden, instructor_names
        self.instructor_imports = instructor_imports
        self.aliases: dict[str, str] = dict(instructor_imports)  # name -> dotted module path
        self.findings: list[Finding] = []

    def add(self, kind: Literal["forbidden", "tampering"], node: ast.AST, message: str) -> None:
        self.findings.append(Finding(kind, getattr(node, "lineno", 0), message))

    # ---- names that come from modules
    def _use(self, node: ast.AST, dotted: str) -> None:
        hit = _matches(dotted, self.forbidden)
        if hit:
            self.add("forbidden", node, f"uses {dotted}, which this assignment forbids ({hit}): write it yourself")
        tamper = _matches(dotted, TAMPER_MODULES)
        if tamper:
            self.add("tampering", node, f"uses {dotted}: answers may not reach into {tamper}")

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            bound = alias.asname or alias.name.split(".")[0]
            self._use(node, alias.name)
            self._rebinds(node, bound, alias.asname and alias.name or alias.name.split(".")[0])
            self.aliases[bound] = alias.name if alias.asname else alias.name.split(".")[0]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = "." * node.level + (node.module or "")
        for alias in node.names:
            if alias.name == "*":
                self._use(node, module)
                if any(p.startswith(module + ".") for p in self.forbidden):
                    self.add("forbidden", node, f"'from {module} import *' brings in names this assignment forbids")
                continue
            full = f"{module}.{alias.name}"
            bound = alias.asname or alias.name
            self._use(node, full)
            self._rebinds(node, bound, full)
            self.aliases[bound] = full

    def _rebinds(self, node: ast.AST, name: str, target: str | None = None) -> None:
        """A name the assignment's own cells define, bound to something else by the answer."""
        if name in self.instructor_names and (target is None or self.instructor_imports.get(name) != target):
            self.add("tampering", node, f"redefines {name!r}, which the assignment's own cells define")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr in TAMPER_ATTRS:
            self.add("tampering", node, f"uses the attribute {node.attr!r}")
        dotted = _dotted(node, self.aliases)
        if dotted is not None and isinstance(node.ctx, ast.Load):
            self._use(node, dotted)
            return  # the chain's inner parts are prefixes of it: do not report them again
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if node.id in TAMPER_CALLS or node.id in {"__builtins__", "__import__", "__loader__", "__spec__"}:
            self.add("tampering", node, f"uses {node.id}()" if node.id in TAMPER_CALLS else f"uses {node.id}")
        if isinstance(node.ctx, ast.Load) and node.id in self.aliases:
            self._use(node, self.aliases[node.id])

    def visit_Constant(self, node: ast.Constant) -> None:
        # type("A", (float,), {"__eq__": ...}) or attrgetter("__globals__"): the dunder arrives as a string
        if isinstance(node.value, str) and (node.value in RIGGED_DUNDERS or node.value in TAMPER_ATTRS):
            self.add("tampering", node, f"names {node.value!r} in a string")

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name) and func.id in {"getattr", "hasattr"} and len(node.args) >= 2:
            if not (isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
                self.add("tampering", node, f"{func.id}() with a computed attribute name")
            else:
                self._getattr_constant(node)
        self.generic_visit(node)

    def _getattr_constant(self, node: ast.Call) -> None:
        base = _dotted(node.args[0], self.aliases) if isinstance(node.args[0], ast.Name | ast.Attribute) else None
        name = node.args[1].value  # type: ignore[attr-defined]
        if name in TAMPER_ATTRS:
            self.add("tampering", node, f"uses the attribute {name!r}")
        if base is not None:
            self._use(node, f"{base}.{name}")

    # ---- bindings
    def _store_target(self, target: ast.AST, value: ast.AST | None, node: ast.AST, top_level: bool) -> None:
        if isinstance(target, ast.Attribute):
            base = target.value
            while isinstance(base, ast.Attribute | ast.Subscript | ast.Call):
                base = base.value if not isinstance(base, ast.Call) else base.func
            if isinstance(base, ast.Name) and base.id in self.aliases:
                self.add("tampering", node, f"changes {ast.unparse(target)}: answers may not patch a module")
            elif target.attr.startswith("__") and target.attr.endswith("__"):
                self.add("tampering", node, f"assigns {ast.unparse(target)}: answers may not patch dunder attributes")
            return
        if isinstance(target, ast.Tuple | ast.List | ast.Starred):
            for elt in target.elts if not isinstance(target, ast.Starred) else [target.value]:
                self._store_target(elt, None, node, top_level)
            return
        if isinstance(target, ast.Name):
            if top_level:
                self._rebinds(node, target.id)
            dotted = _dotted(value, self.aliases) if isinstance(value, ast.Name | ast.Attribute) else None
            self.aliases.pop(target.id, None)  # shadowed (in a function: until the function ends)
            if dotted is not None:
                self.aliases[target.id] = dotted  # f = torchvision.ops: f.nms is torchvision.ops.nms

    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            self._store_target(target, node.value, node, self._top_level(node))
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._store_target(node.target, node.value, node, self._top_level(node))
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._store_target(node.target, None, node, self._top_level(node))
        self.generic_visit(node)

    def visit_Delete(self, node: ast.Delete) -> None:
        for target in node.targets:
            self._store_target(target, None, node, self._top_level(node))
        self.generic_visit(node)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self._store_target(node.target, node.value, node, True)  # := leaks to the enclosing scope
        self.generic_visit(node)

    def visit_Global(self, node: ast.Global) -> None:
        for name in node.names:
            self._rebinds(node, name)

    def visit_Nonlocal(self, node: ast.Nonlocal) -> None:
        self.visit_Global(node)  # type: ignore[arg-type]

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        if self._top_level(node):
            self._rebinds(node, node.name)
        outer = dict(self.aliases)  # names bound inside the function are its own
        for arg in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs, node.args.vararg, node.args.kwarg]:
            if arg is not None:
                self.aliases.pop(arg.arg, None)
        self.generic_visit(node)
        self.aliases = outer

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        if self._top_level(node):
            self._rebinds(node, node.name)
        for item in node.body:
            if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name in RIGGED_DUNDERS:
                self.add("tampering", item, f"class {node.name} defines {item.name}: answers may not rig comparisons")
        for kw in node.keywords:
            if kw.arg == "metaclass":
                self.add("tampering", node, f"class {node.name} sets a metaclass")
        self.generic_visit(node)

    def _top_level(self, node: ast.AST) -> bool:
        return getattr(node, "_ck_top", False)


def _mark_top_level(tree: ast.Module) -> None:
    """Statements whose bindings land in the notebook's namespace: the module body, and inside if/for/with/try."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        node._ck_top = True  # type: ignore[attr-defined]
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue  # their bodies bind names of their own scope
        for field in ("body", "orelse", "finalbody", "handlers"):
            for child in getattr(node, field, []) or []:
                if isinstance(child, ast.stmt | ast.excepthandler):
                    todo.append(child)


def _magic_findings(tree: ast.Module, checker: _Checker) -> list[Finding]:
    """IPython's magics arrive as ``get_ipython().run_line_magic(name, arg)``: allow the harmless ones."""
    findings = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Call) and isinstance(node.func.value.func, ast.Name)
                and node.func.value.func.id == "get_ipython"):
            continue
        method = node.func.attr
        args = [a.value for a in node.args if isinstance(a, ast.Constant)]
        if method in ("run_line_magic", "run_cell_magic") and args and args[0] in ALLOWED_MAGICS:
            node.func.value.func.id = "_ck_allowed_magic"  # not reported as get_ipython below
            if ALLOWED_MAGICS[args[0]]:
                code = "\n".join(str(a) for a in args[1:])
                findings += check_answer(code, checker.forbidden, checker.instructor_names,
                                         checker.instructor_imports, _depth=1)
        else:
            what = {"system": "a shell command (!)", "getoutput": "a shell command (!!)"}.get(
                method, f"the magic %{args[0]}" if args else f"get_ipython().{method}")
            findings.append(Finding("tampering", node.lineno, f"runs {what}: answers may not use IPython's shell"))
            node.func.value.func.id = "_ck_reported"
    return findings


def check_answer(source: str, forbidden: Iterable[str] = (), instructor_names: Iterable[str] = (),
                 instructor_imports: dict[str, str] | None = None, *, _depth: int = 0) -> list[Finding]:
    """Everything wrong with one answer cell's ``source``; empty for an honest answer.

    Args:
        source: the cell as the student wrote it (magics included).
        forbidden: dotted names the assignment forbids (a module forbids everything under it).
        instructor_names: names the assignment's own cells bind at the top level (not to be redefined).
        instructor_imports: of those, the imports (``{"torch": "torch", "Tensor": "torch.Tensor"}``): an
            answer that imports the same thing again is fine.

    A cell that does not parse has no findings: it fails when it runs.
    """
    try:
        tree = ast.parse(transform_cell(source))
    except (SyntaxError, ValueError):
        return []
    if _depth > 3:
        return [Finding("tampering", 0, "magics nested too deep")]
    _mark_top_level(tree)
    checker = _Checker(sorted(set(forbidden)), set(instructor_names), dict(instructor_imports or {}))
    findings = _magic_findings(tree, checker)
    checker.visit(tree)
    seen, unique = set(), []
    for finding in findings + checker.findings:
        if (finding.line, finding.message) not in seen:
            seen.add((finding.line, finding.message))
            unique.append(finding)
    return sorted(unique, key=lambda f: f.line)


def instructor_imports(sources: Iterable[str]) -> dict[str, str]:
    """The imports the assignment's own cells make at the top level: bound name -> dotted path."""
    found: dict[str, str] = {}
    for tree in _trees(sources):
        for node in tree.body:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    top = alias.name.split(".")[0]
                    found[alias.asname or top] = alias.name if alias.asname else top
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                for alias in node.names:
                    if alias.name != "*":
                        found[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return found
