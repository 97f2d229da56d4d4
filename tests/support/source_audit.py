"""Static checks on the package's source (``ast``) for rules no runtime test can cover fully.

Two rules the README states:

* **No shell, no other program.** Nothing in ``isic2020`` runs a shell or executes a program:
  no ``subprocess``, ``os.system``/``popen``, ``os.exec*``, ``os.spawn*``, ``posix_spawn``,
  ``pty``, asyncio subprocesses, ``webbrowser``, ``os.startfile``, nor the same functions
  reached through libc with ``ctypes``. Forking its own workers is allowed (``extract`` forks
  with ``os.fork``; ``verify --deep`` uses a ``ProcessPoolExecutor``): a forked child runs this
  package's code, never a command line built from a manifest, a CSV or a server's answer.
* **TLS is always verified.** No ``verify=`` other than ``True``, no ``.verify = ...``, no
  ``check_hostname``/``verify_mode`` lowered, no ``CERT_NONE``/``CERT_OPTIONAL``, no
  unverified context, no silenced urllib3 warnings, no ``CURL_CA_BUNDLE`` games.

A name counts however it is reached: ``mod.name`` through any alias (``import os as o``),
``from mod import name [as x]``, ``from mod import *``, ``getattr``/``attrgetter``/
``methodcaller`` or a subscript with the name as a constant string, ``importlib.import_module``
and ``__import__`` of a banned module. What static analysis cannot follow is banned outright:
``eval``/``exec``/``compile``, ``getattr`` with a computed name, and dynamic imports of a
computed name, except one that provably picks from a module-level dict whose values are all
``isic2020.*`` modules (the package's lazy attributes), whose source is checked here too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

#: Importing any of these (or a submodule) at all is an offence.
PROCESS_MODULES = frozenset({
    "subprocess", "_posixsubprocess", "pty", "pipes", "commands", "popen2", "webbrowser",
    "asyncio.subprocess", "runpy",
})
#: Functions that run a shell or execute a program, whatever object they are reached on (an
#: ``os`` alias, ``posix``, a ``ctypes.CDLL`` of libc, an asyncio loop).
PROCESS_NAMES = frozenset({
    "system", "popen", "startfile", "forkpty", "set_executable",
    "execl", "execle", "execlp", "execlpe", "execv", "execve", "execvp", "execvpe", "fexecve",
    "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe",
    "posix_spawn", "posix_spawnp",
    "create_subprocess_exec", "create_subprocess_shell", "subprocess_exec", "subprocess_shell",
    "getoutput", "getstatusoutput",
})
#: Where these names are harmless (``platform.system()`` names the OS).
HARMLESS = frozenset({("platform", "system")})

#: Names that turn certificate or host name checks off, or hide that they are off.
TLS_NAMES = frozenset({
    "CERT_NONE", "CERT_OPTIONAL", "_create_unverified_context", "_create_stdlib_context",
    "_create_default_https_context", "disable_warnings", "InsecureRequestWarning",
    "CURL_CA_BUNDLE",
})
#: Attributes and keywords that may only ever be set to ``True`` (or ``ssl.CERT_REQUIRED``).
TLS_MUST_BE_TRUE = frozenset({"verify", "check_hostname", "assert_hostname"})
TLS_MUST_BE_REQUIRED = frozenset({"verify_mode", "cert_reqs"})

#: Calls that fetch an attribute by a name given as a string (setattr/delattr cannot call it).
NAME_GETTERS = frozenset({"getattr", "attrgetter", "methodcaller", "hasattr"})
DYNAMIC_IMPORTS = frozenset({"import_module", "__import__"})
CODE_RUNNERS = frozenset({"eval", "exec", "compile"})


@dataclass(frozen=True)
class Offence:
    """One place in the source that breaks a rule."""

    path: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


def _banned_module(name: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in PROCESS_MODULES)


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> the module it stands for (``import os as o`` -> ``{"o": "os"}``)."""
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                out[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(
                    ".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                out[a.asname or a.name] = f"{node.module}.{a.name}"
    return out


def _base_module(node: ast.expr, aliases: dict[str, str]) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return aliases.get(node.id) if isinstance(node, ast.Name) else None


def _func_name(call: ast.Call) -> str:
    f = call.func
    if isinstance(f, ast.Attribute):
        return f.attr
    return f.id if isinstance(f, ast.Name) else ""


def _const_str(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _string_tuples(tree: ast.Module) -> dict[str, list[str]]:
    """Module-level names bound to a tuple or list of strings known from the source: a literal
    of constants, or ``[f.name for f in fields(C)]`` for a class C of this module (its
    annotated fields)."""
    classes = {
        c.name: [a.target.id for a in c.body
                 if isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name)]
        for c in tree.body if isinstance(c, ast.ClassDef)
    }
    out = {}
    for node in tree.body:
        if not isinstance(node, ast.Assign):
            continue
        v = node.value
        items: list[str | None] | None = None
        if isinstance(v, (ast.Tuple, ast.List)):
            items = [_const_str(e) for e in v.elts]
        elif (
            isinstance(v, ast.ListComp) and len(v.generators) == 1
            and isinstance(v.elt, ast.Attribute) and v.elt.attr == "name"
            and isinstance(v.generators[0].iter, ast.Call)
            and _func_name(v.generators[0].iter) == "fields"
            and len(v.generators[0].iter.args) == 1
            and isinstance(cls := v.generators[0].iter.args[0], ast.Name)
            and cls.id in classes
        ):
            items = list(classes[cls.id])
        if items is not None and all(i is not None for i in items):
            out |= {t.id: items for t in node.targets if isinstance(t, ast.Name)}
    return out


def _const_strs(node: ast.AST | None, tuples: dict[str, list[str]]) -> list[str] | None:
    """The constant strings ``node`` stands for (a constant, or ``*NAME`` of a module-level
    tuple of constants); None when it is computed."""
    if (s := _const_str(node)) is not None:
        return [s]
    if isinstance(node, ast.Starred) and isinstance(node.value, ast.Name):
        return tuples.get(node.value.id)
    return None


def _package_only_dicts(tree: ast.Module, package: str) -> set[str]:
    """Module-level names bound to a dict literal whose values are all ``package.*`` strings."""
    out = set()
    for node in tree.body:
        value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, ast.AnnAssign) else [])
        if isinstance(value, ast.Dict) and value.values and all(
            (s := _const_str(v)) is not None and s.startswith(package + ".") for v in value.values
        ):
            out |= {t.id for t in targets if isinstance(t, ast.Name)}
    return out


def _picked_from(name: str, scope: ast.AST, dicts: set[str]) -> bool:
    """``name`` is only ever assigned ``D.get(...)`` or ``D[...]`` with D in ``dicts``."""
    sources = []
    for node in ast.walk(scope):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            sources.append(node.value)
    if not sources:
        return False
    for v in sources:
        if isinstance(v, ast.Call) and isinstance(v.func, ast.Attribute) and v.func.attr == "get":
            v = v.func.value
        elif isinstance(v, ast.Subscript):
            v = v.value
        else:
            return False
        if not (isinstance(v, ast.Name) and v.id in dicts):
            return False
    return True


def _enclosing_functions(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    """Each node -> the innermost function around it (module-level nodes are absent)."""
    parent: dict[ast.AST, ast.AST] = {}
    for node in ast.walk(tree):  # outer functions first: inner ones overwrite
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if inner is not node:
                    parent[inner] = node
    return parent


def process_offences(source: str, path: str = "<src>", package: str = "isic2020") -> list[Offence]:
    """Every way ``source`` could run a shell or another program (see the module docstring)."""
    tree = ast.parse(source, path)
    aliases = _aliases(tree)
    dicts = _package_only_dicts(tree, package)
    tuples = _string_tuples(tree)
    scope_of = _enclosing_functions(tree)
    out: list[Offence] = []

    def bad(node: ast.AST, what: str) -> None:
        out.append(Offence(path, getattr(node, "lineno", 0), what))

    def banned_name(name: str, module: str | None) -> bool:
        return name in PROCESS_NAMES and (module or "", name) not in HARMLESS

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if _banned_module(a.name):
                    bad(node, f"imports {a.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                full = f"{node.module}.{a.name}"
                if _banned_module(node.module) or _banned_module(full):
                    bad(node, f"imports {full}")
                elif a.name == "*" and node.module in ("os", "posix", "nt", "ctypes"):
                    bad(node, f"from {node.module} import *")
                elif banned_name(a.name, node.module):
                    bad(node, f"from {node.module} import {a.name}")
        elif isinstance(node, ast.Attribute) and banned_name(
            node.attr, _base_module(node.value, aliases)
        ):
            bad(node, f"uses .{node.attr}")
        elif isinstance(node, ast.Name) and node.id in CODE_RUNNERS:
            bad(node, f"{node.id}()")
        elif isinstance(node, ast.Subscript):
            key = _const_str(node.slice)
            if key is not None and (key in PROCESS_NAMES or _banned_module(key)):
                bad(node, f"[{key!r}]")
        elif isinstance(node, ast.Call):
            fname = _func_name(node)
            if any(kw.arg == "shell" for kw in node.keywords):
                bad(node, "shell=")
            if fname in DYNAMIC_IMPORTS:
                arg = node.args[0] if node.args else None
                key = _const_str(arg)
                if key is not None:
                    if _banned_module(key):
                        bad(node, f"{fname}({key!r})")
                elif not _imports_ours(node, scope_of, dicts):
                    bad(node, f"{fname}() of a computed module name")
            elif fname in NAME_GETTERS:
                two = fname in ("getattr", "hasattr")
                args = node.args[1:2] if two else node.args[:1]
                if fname == "attrgetter":
                    args = node.args
                for arg in args:
                    keys = _const_strs(arg, tuples)
                    if keys is not None:
                        for key in keys:
                            if key in PROCESS_NAMES:
                                bad(node, f"{fname}({key!r})")
                    elif fname != "hasattr" and not (
                        two and _imports_ours(node.args[0], scope_of, dicts)
                    ):
                        bad(node, f"{fname}() with a computed name")
    return out


def _imports_ours(node: ast.AST, scope_of: dict[ast.AST, ast.AST], dicts: set[str]) -> bool:
    """``node`` is ``import_module(m)``/``__import__(m)`` where ``m`` is provably picked from a
    module-level dict of the package's own module names (so its source is checked too)."""
    if not (isinstance(node, ast.Call) and _func_name(node) in DYNAMIC_IMPORTS and node.args):
        return False
    arg = node.args[0]
    return (
        isinstance(arg, ast.Name) and node in scope_of
        and _picked_from(arg.id, scope_of[node], dicts)
    )


def _true(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _cert_required(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "CERT_REQUIRED" or (
        _const_str(node) == "CERT_REQUIRED"
    )


def tls_offences(source: str, path: str = "<src>") -> list[Offence]:
    """Every way ``source`` could turn TLS verification off (see the module docstring)."""
    tree = ast.parse(source, path)
    out: list[Offence] = []

    def bad(node: ast.AST, what: str) -> None:
        out.append(Offence(path, getattr(node, "lineno", 0), what))

    def check_value(node: ast.AST, name: str, value: ast.AST) -> None:
        if name in TLS_MUST_BE_TRUE and not _true(value):
            bad(node, f"{name} = {ast.unparse(value)}")
        if name in TLS_MUST_BE_REQUIRED and not _cert_required(value):
            bad(node, f"{name} = {ast.unparse(value)}")

    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg:
            check_value(node.value, node.arg, node.value)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            value = node.value
            for t in _flatten(targets) if value is not None else ():
                if isinstance(node, ast.AugAssign):
                    value = node  # ``x.verify |= ...`` is not ``True``
                if isinstance(t, ast.Attribute):
                    check_value(node, t.attr, value)
                elif isinstance(t, ast.Subscript) and (key := _const_str(t.slice)) is not None:
                    check_value(node, key, value)
        elif isinstance(node, ast.Call) and _func_name(node) == "setattr" and len(node.args) > 2:
            key = _const_str(node.args[1])
            if key is not None:
                check_value(node, key, node.args[2])
        if isinstance(node, ast.Attribute) and node.attr in TLS_NAMES:
            bad(node, f"uses .{node.attr}")
        elif isinstance(node, ast.Name) and node.id in TLS_NAMES:
            bad(node, f"uses {node.id}")
        elif isinstance(node, ast.ImportFrom):
            for a in node.names:
                if a.name in TLS_NAMES:
                    bad(node, f"from {node.module} import {a.name}")
        elif (s := _const_str(node)) is not None and s in TLS_NAMES:
            bad(node, f"names {s!r}")
    return out


def _flatten(targets: list[ast.expr]) -> Iterator[ast.expr]:
    for t in targets:
        if isinstance(t, (ast.Tuple, ast.List)):
            yield from _flatten(list(t.elts))
        else:
            yield t


def package_offences(src: Path, check) -> list[Offence]:
    """``check(source, path)`` over every ``.py`` file under ``src``."""
    files = sorted(src.rglob("*.py"))
    assert len(files) >= 10, f"only {len(files)} source files under {src}"
    out: list[Offence] = []
    for p in files:
        out += check(p.read_text(), str(p.relative_to(src.parent)))
    return out
