from __future__ import annotations

from typer.testing import CliRunner

from assetbox import __version__
from assetbox.cli import app

runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"assetbox {__version__}"
    assert __version__ != "0.0.0"  # the installed package's metadata is found


def test_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "tiles" in result.output


def test_tiles_prints_the_plan() -> None:
    result = runner.invoke(app, ["tiles", "8192", "8192", "--tile", "1024", "--overlap", "128"])
    assert result.exit_code == 0, result.output
    assert "81 tiles" in result.output
    assert "7168" in result.output  # last start, flush with the border


def test_tiles_refuses_an_overlap_as_large_as_the_tile() -> None:
    result = runner.invoke(app, ["tiles", "100", "100", "--tile", "64", "--overlap", "64"])
    assert result.exit_code == 2
    assert "overlap" in result.output


def test_edit_help_says_the_size_defaults_to_the_input() -> None:
    from typer.testing import CliRunner

    from assetbox.cli import app

    result = CliRunner().invoke(app, ["edit", "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "Default: the input's width rounded to that multiple" in text
    assert "(default: by family)" in text  # rich markup would swallow "[default: ...]"


def test_the_upscale_bar_moves_within_a_unit() -> None:
    from assetbox.cli import _bar_position

    units = ("done", "total")
    assert _bar_position({"done": 2, "total": 7, "step": 1, "steps": 4}, units) == (2.25, 7)
    assert _bar_position({"done": 3, "total": 7, "step": 4, "steps": 4}, units) == (3, 7)
    assert _bar_position({"done": 0, "total": 0}, units) is None
    steps = ("step", "steps")
    assert _bar_position({"done": 0, "total": 1, "step": 5, "steps": 8}, steps) == (5, 8)
