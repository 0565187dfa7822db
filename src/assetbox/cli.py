"""The `assetbox` command line."""

from __future__ import annotations

from typing import Annotated

import typer

from assetbox import __version__

app = typer.Typer(
    name="assetbox",
    help="AI Assets Toolbox: generate, edit, caption and upscale images.",
    no_args_is_help=True,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"assetbox {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """AI Assets Toolbox: generate, edit, caption and upscale images."""


@app.command("tiles")
def tiles(
    width: Annotated[int, typer.Argument(help="Image width in pixels.")],
    height: Annotated[int, typer.Argument(help="Image height in pixels.")],
    tile: Annotated[int, typer.Option(help="Tile size in pixels.")] = 1024,
    overlap: Annotated[int, typer.Option(help="Least overlap between neighbours.")] = 128,
) -> None:
    """Show the tile plan for an image size: grid, tile positions and seam overlaps."""
    from rich.console import Console
    from rich.table import Table

    from assetbox.errors import InvalidInput
    from assetbox.imaging import TilePlan

    try:
        plan = TilePlan.for_image(width, height, tile, overlap)
    except InvalidInput as exc:
        raise typer.BadParameter(exc.message, param_hint=f"--{exc.field}") from exc
    console = Console()
    table = Table(title=f"{width}x{height}: {plan.rows}x{plan.cols} = {len(plan)} tiles")
    table.add_column("axis")
    table.add_column("starts")
    table.add_column("seam overlaps")
    table.add_row("x", " ".join(map(str, plan.xs)), " ".join(map(str, plan.seams("x"))) or "-")
    table.add_row("y", " ".join(map(str, plan.ys)), " ".join(map(str, plan.seams("y"))) or "-")
    console.print(table)
    if plan.padded:
        console.print("The image is smaller than a tile along an axis: its tile is padded.")
