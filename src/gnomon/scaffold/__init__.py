"""``gnomon init``: write a runnable example feature repo with deterministic sample data.

>>> import tempfile, pathlib
>>> repo = create_example_repo(pathlib.Path(tempfile.mkdtemp()) / "quickstart")
>>> sorted(p.name for p in (repo / "features").iterdir())
['__init__.py', 'item_ratings.py', 'training.py', 'user_activity.py']
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from gnomon.errors import GnomonError
from gnomon.scaffold.sample_data import FIRST_DS, LAST_DS, write_sample_data

__all__ = ["FIRST_DS", "LAST_DS", "FolderNotEmptyError", "create_example_repo"]

# repo path -> template file. Templates are flat so one package-data glob ships them all, and the Python
# ones end in .tmpl so that pytest --doctest-modules and mypy do not import them as part of gnomon.
_FILES = {
    "gnomon.yaml": "gnomon.yaml",
    "README.md": "README.md",
    "features/__init__.py": None,
    "features/user_activity.py": "user_activity.py.tmpl",
    "features/item_ratings.py": "item_ratings.py.tmpl",
    "features/training.py": "training.py.tmpl",
}


class FolderNotEmptyError(GnomonError, FileExistsError):
    """``gnomon init`` was pointed at a folder that already holds files; nothing was written."""

    def __init__(self, folder: Path, suggestion: Path) -> None:
        self.folder, self.suggestion = folder, suggestion
        super().__init__(
            f"{str(folder)!r} already exists and is not empty; gnomon init never overwrites "
            f"files. Pick a new folder, e.g. `gnomon init {suggestion}`."
        )


def create_example_repo(path: str | Path, *, seed: int = 7, last_ds: str | None = None) -> Path:
    """Write the quickstart repo (config, three definition modules, README, sample warehouse) at ``path``.

    ``path`` must not exist or be an empty folder. The sample data depends only on ``seed``: the same
    seed gives byte-identical Parquet files. Returns the repo's absolute path.
    """
    repo = Path(path).expanduser().absolute()
    if repo.exists() and (not repo.is_dir() or any(repo.iterdir())):
        given = Path(path)
        raise FolderNotEmptyError(given, _free_child(given) if repo.is_dir() else _free_sibling(given))
    templates = resources.files("gnomon.scaffold").joinpath("templates")
    for target, template in _FILES.items():
        destination = repo / target
        destination.parent.mkdir(parents=True, exist_ok=True)
        text = templates.joinpath(template).read_text(encoding="utf-8") if template else ""
        destination.write_text(text, encoding="utf-8")
    write_sample_data(repo / "warehouse", seed=seed, **({"last_ds": last_ds} if last_ds else {}))
    return repo


def _free_child(folder: Path) -> Path:
    candidate, number = folder / "quickstart", 2
    while candidate.exists():
        candidate, number = folder / f"quickstart{number}", number + 1
    return candidate


def _free_sibling(file: Path) -> Path:
    candidate, number = file.with_name(f"{file.name}_quickstart"), 2
    while candidate.exists():
        candidate, number = file.with_name(f"{file.name}_quickstart{number}"), number + 1
    return candidate
