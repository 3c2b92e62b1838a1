"""Loading a feature repo: import its Python modules and collect module-level definitions."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gnomon.definitions import GroupBy, Join, JoinSource, StagingQuery
from gnomon.definitions.join import Definition
from gnomon.errors import DefinitionError

_SKIP_DIRS = {"warehouse", "compiled", "tests", "venv", "node_modules", "build", "dist", "__pycache__"}


@dataclass
class LoadedRepo:
    """Every named definition of a repo, with the file each came from."""

    objects: dict[str, Definition] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # name -> file (for error messages)
    names_by_id: dict[int, str] = field(default_factory=dict)

    def name_of(self, obj: Definition) -> str:
        """The name a definition was registered under (explicit ``name`` wins)."""
        try:
            return self.names_by_id[id(obj)]
        except KeyError:
            kind = type(obj).__name__
            raise DefinitionError(
                f"this {kind} is used but is not a module-level variable of the repo, and has no name",
                obj=kind,
                field="name",
                fix=f'give it a name: {kind}(..., name="team.my_feature"), or assign it '
                "to a module-level variable",
            ) from None

    def add(self, name: str, obj: Definition, file: str) -> None:
        if id(obj) in self.names_by_id:
            return
        if name in self.objects and self.objects[name] is not obj:
            raise DefinitionError(
                f"two definitions are named {name!r} ({self.files[name]} and {file})",
                obj=type(obj).__name__,
                field="name",
                fix="give one of them another name",
                file=file,
            )
        self.objects[name] = obj
        self.files[name] = file
        self.names_by_id[id(obj)] = name


def _module_files(root: Path) -> list[Path]:
    files = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if any(p.startswith(".") or p in _SKIP_DIRS for p in parts[:-1]):
            continue
        if parts[-1] in ("setup.py", "conftest.py") or parts[-1].startswith("test_"):
            continue
        files.append(path)
    return files


def _failing_file(error: BaseException, root: Path) -> str | None:
    """The innermost repo file in the traceback: the module that really failed, not its importer."""
    found = None
    traceback = error.__traceback__
    while traceback is not None:
        filename = traceback.tb_frame.f_code.co_filename
        if filename.startswith(str(root)):
            found = filename
        traceback = traceback.tb_next
    return found


def load_repo(root: str | Path, extra: Mapping[str, Definition] | None = None) -> LoadedRepo:
    """Import every module of the repo and collect GroupBys, Joins and StagingQueries.

    A definition's name is its ``name`` field, else the dotted module path plus the variable name.
    ``extra`` adds definitions by name (notebooks, tests).
    """
    root = Path(root).resolve()
    loaded = LoadedRepo()
    for name, obj in (extra or {}).items():
        loaded.add(getattr(obj, "name", None) or name, obj, "<objects>")
    if str(root) in sys.path:  # first on the path, so this repo's packages win over another repo's
        sys.path.remove(str(root))
    sys.path.insert(0, str(root))
    module_names = [".".join(p.relative_to(root).with_suffix("").parts) for p in _module_files(root)]
    module_names = [m.removesuffix(".__init__") for m in module_names]
    for module_name in module_names:  # re-import, so a second compile sees edited files
        for loaded_name in [m for m in sys.modules if m == module_name or m.startswith(module_name + ".")]:
            del sys.modules[loaded_name]
    candidates: list[tuple[str, str, Definition, str]] = []
    for module_name in module_names:
        file = str(root / (module_name.replace(".", "/") + ".py"))
        try:
            module = importlib.import_module(module_name)
        except DefinitionError as error:
            raise DefinitionError(str(error), file=_failing_file(error, root) or file) from None
        except Exception as error:  # a user's module failed to import: say which, keep the cause
            failing = _failing_file(error, root) or file
            raise DefinitionError(
                f"importing {module_name} failed: {type(error).__name__}: {error}",
                file=failing,
                fix=f"fix the module so that `python -c 'import {module_name}'` works from the repo folder",
            ) from error
        file = getattr(module, "__file__", file) or file
        for var, obj in vars(module).items():
            if isinstance(obj, (GroupBy, Join, StagingQuery)) and not var.startswith("_"):
                candidates.append((module_name, var, obj, file))
    # An object imported into several modules is named after the module that built it.
    for module_name, var, obj, file in sorted(candidates, key=lambda c: c[0] != c[2].defined_in):
        loaded.add(obj.name or f"{module_name}.{var}", obj, file)
    _add_named_dependencies(loaded)
    return loaded


def _add_named_dependencies(loaded: LoadedRepo) -> None:
    """A Join may use a GroupBy (or a JoinSource a Join) that has a name but no module variable."""
    pending = list(loaded.objects.items())
    while pending:
        name, obj = pending.pop()
        used: list[Definition] = []
        if isinstance(obj, Join):
            used.extend(part.group_by for part in obj.right_parts)
            used.extend(s.join for s in [obj.left] if isinstance(s, JoinSource))
        if isinstance(obj, GroupBy):
            used.extend(s.join for s in obj.sources if isinstance(s, JoinSource))
        for dependency in used:
            if id(dependency) not in loaded.names_by_id and dependency.name:
                loaded.add(dependency.name, dependency, loaded.files.get(name, "<objects>"))
                pending.append((dependency.name, dependency))
