"""The `gnomon` command line (SPEC §6)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from gnomon.errors import GnomonError

repo_option = click.option("--repo", default=".", show_default=True, type=click.Path(file_okay=False),
                           help="The feature repo folder (holds gnomon.yaml).")


class _Group(click.Group):
    """Prints Gnomon's own errors as one clear line and exits 1, instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except GnomonError as error:
            click.secho(f"error: {error}", fg="red", err=True)
            sys.exit(1)


@click.group(cls=_Group)
@click.option("-v", "--verbose", is_flag=True, help="Log progress lines.")
@click.version_option(package_name="gnomon")
def main(verbose: bool) -> None:
    """Gnomon: one Python definition of a feature, computed identically offline and online."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s")


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
def init(directory: str) -> None:
    """Create a runnable example repo (definitions and sample data) in DIRECTORY."""
    from gnomon.scaffold import create_example_repo

    path = create_example_repo(directory)
    click.echo(f"created the example repo in {path}")
    click.echo(f"next: gnomon compile --repo {directory}")


@main.command(name="compile")
@repo_option
def compile_command(repo: str) -> None:
    """Validate every definition, write compiled/plan.json and print what will be computed."""
    from gnomon.compile.summary import summarize
    from gnomon.project import Project

    project = Project(repo)
    plan = project.compile()
    click.echo(summarize(plan))
    if (Path(repo) / "gnomon.yaml").exists():
        click.echo(f"\nplan written to {Path(repo) / 'compiled' / 'plan.json'}")


@main.command()
@click.argument("name")
@click.option("--start-ds", required=True, help="First partition to compute (YYYY-MM-DD).")
@click.option("--end-ds", required=True, help="Last partition to compute (YYYY-MM-DD).")
@click.option("--force", is_flag=True, help="Recompute partitions that already exist.")
@click.option("--show", default=0, show_default=True, help="Print this many output rows when done.")
@repo_option
def backfill(name: str, start_ds: str, end_ds: str, force: bool, show: int, repo: str) -> None:
    """Compute partitions of a GroupBy, Join or StagingQuery into its output table."""
    from gnomon.project import Project

    project = Project(repo)
    written = project.backfill(name, start_ds, end_ds, force=force)
    table = project.output_table(name)
    if written:
        click.echo(f"{name}: wrote {len(written)} partition(s) of {table} ({written[0]} .. {written[-1]})")
    else:
        click.echo(f"{name}: nothing to do, every partition of {table} in [{start_ds}, {end_ds}] exists "
                   "(use --force to recompute)")
    if show:
        rows = project.warehouse.read_table(table, start_ds, end_ds).slice(0, show).to_pylist()
        for row in rows:
            click.echo(json.dumps(row, default=str))


if __name__ == "__main__":
    main()
