"""`assetbox upscale` and `assetbox models` end to end, with the real built-in models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from assetbox.cli import app
from tests.utils.images import encode_png16, photo

runner = CliRunner()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / mse))


@pytest.fixture(scope="module")
def lr_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """skimage's astronaut resized to 128x128 with Pillow's bicubic filter."""
    path = tmp_path_factory.mktemp("inputs") / "lr.png"
    Image.fromarray(photo("astronaut")).resize((128, 128), Image.Resampling.BICUBIC).save(path)
    return path


def upscale(*args: str) -> None:
    result = runner.invoke(app, ["upscale", *args])
    assert result.exit_code == 0, result.output


def read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.mark.usefixtures("builtin_data_dir")
@pytest.mark.parametrize("model", ["realesrgan-x4plus", "realesr-animevideov3-x4"])
def test_upscale_recovers_the_photo(lr_png: Path, tmp_path: Path, model: str) -> None:
    out = tmp_path / "out.png"
    upscale(str(lr_png), "-o", str(out), "--model", model)
    pixels = read(out)
    assert pixels.shape == (512, 512, 3)
    assert psnr(pixels, photo("astronaut")) >= 22


@pytest.mark.usefixtures("builtin_data_dir")
def test_default_model_needs_no_manual_step(
    lr_png: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fresh data directory: the default model is converted on first use.
    monkeypatch.setenv("ASSETBOX_DATA_DIR", str(tmp_path / "fresh"))
    from assetbox.config import get_settings

    get_settings.cache_clear()
    out = tmp_path / "out.png"
    upscale(str(lr_png), "-o", str(out))
    assert read(out).shape == (512, 512, 3)
    assert (tmp_path / "fresh" / "models" / "upscalers" / "realesrgan-x4plus").is_dir()


@pytest.mark.usefixtures("builtin_data_dir")
@pytest.mark.parametrize(
    ("model", "max_err", "mean_err", "p999_err"),
    [("realesr-animevideov3-x4", 3, 3, 3), ("realesrgan-x4plus", 255, 0.5, 8)],
)
def test_tiling_is_invisible(
    lr_png: Path, tmp_path: Path, model: str, max_err: int, mean_err: float, p999_err: float
) -> None:
    tiled, untiled = tmp_path / "tiled.png", tmp_path / "untiled.png"
    upscale(str(lr_png), "-o", str(tiled), "--model", model, "--tile", "64")
    upscale(str(lr_png), "-o", str(untiled), "--model", model, "--tile", "0")
    diff = np.abs(read(tiled).astype(int) - read(untiled))
    assert diff.max() <= max_err
    assert diff.mean() <= mean_err
    assert np.percentile(diff, 99.9) <= p999_err


@pytest.mark.usefixtures("builtin_data_dir")
def test_torch_and_ncnn_engines_agree(lr_png: Path, tmp_path: Path) -> None:
    outs = []
    for engine in ("torch", "ncnn"):
        out = tmp_path / f"{engine}.png"
        upscale(
            str(lr_png), "-o", str(out), "--model", "realesr-animevideov3-x2", "--engine", engine
        )
        outs.append(read(out).astype(int))
    assert outs[0].shape == (256, 256, 3)
    assert np.abs(outs[0] - outs[1]).max() <= 1


@pytest.mark.usefixtures("builtin_data_dir")
def test_scale_below_the_model_uses_lanczos(lr_png: Path, tmp_path: Path) -> None:
    out = tmp_path / "x2.webp"
    upscale(str(lr_png), "-o", str(out), "--model", "realesr-animevideov3-x4", "--scale", "2")
    assert Image.open(out).format == "WEBP" and Image.open(out).size == (256, 256)


@pytest.mark.usefixtures("builtin_data_dir")
def test_rgba_gray_and_16bit_inputs(tmp_path: Path) -> None:
    rgb = photo("chelsea")[:48, :64]
    alpha = np.zeros(rgb.shape[:2], np.uint8)
    alpha[8:40, 8:56] = 255
    rgba_in, rgba_out = tmp_path / "rgba.png", tmp_path / "rgba_out.png"
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(rgba_in)
    upscale(str(rgba_in), "-o", str(rgba_out), "--model", "realesr-animevideov3-x2")
    out = Image.open(rgba_out)
    assert out.mode == "RGBA" and out.size == (128, 96)
    out_alpha = np.asarray(out)[..., 3]
    assert out_alpha[48, 64] == 255 and out_alpha[2, 2] == 0

    gray_in, gray_out = tmp_path / "gray.png", tmp_path / "gray_out.png"
    Image.fromarray(rgb[..., 1]).save(gray_in)
    upscale(str(gray_in), "-o", str(gray_out), "--model", "realesr-animevideov3-x2")
    assert Image.open(gray_out).mode == "L" and Image.open(gray_out).size == (128, 96)

    deep_in, deep_out = tmp_path / "deep.png", tmp_path / "deep_out.png"
    deep_in.write_bytes(encode_png16(rgb.astype(np.uint16) * 257))
    upscale(str(deep_in), "-o", str(deep_out), "--model", "realesr-animevideov3-x2")
    from assetbox.imaging import decode_image

    decoded = decode_image(deep_out.read_bytes())
    assert decoded.rgb.dtype == np.uint16 and decoded.rgb.shape == (96, 128, 3)
    eight_bit = tmp_path / "eight.png"
    Image.fromarray(rgb).save(eight_bit)
    upscale(
        str(eight_bit), "-o", str(tmp_path / "eight_out.png"), "--model", "realesr-animevideov3-x2"
    )
    close = read(tmp_path / "eight_out.png").astype(int) - decoded.rgb.astype(int) / 257
    assert np.abs(close).max() <= 2


@pytest.mark.usefixtures("builtin_data_dir")
def test_progress_is_quiet_when_piped(lr_png: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "upscale",
            str(lr_png),
            "-o",
            str(tmp_path / "o.png"),
            "--model",
            "realesr-animevideov3-x2",
        ],
    )
    assert result.exit_code == 0
    assert result.stderr == ""  # no progress bar away from a terminal
    assert result.stdout.startswith(f"wrote {tmp_path / 'o.png'} (256x256, ")  # for scripts


@pytest.mark.usefixtures("builtin_data_dir")
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-o", "out.gif"], "must end in .png"),
        (["-o", "out.png", "--tile", "8"], "`tile`"),
        (["-o", "out.png", "--scale", "5"], "`scale` must be 2, 3 or 4"),
        (["-o", "out.png", "--model", "../../etc"], "`id` must be"),
        (["-o", "out.png", "--model", "missing-model"], "no upscaler 'missing-model'"),
        (["-o", "out.png", "--engine", "tpu"], "engine"),
    ],
)
def test_bad_arguments_are_clear_errors_and_write_nothing(
    lr_png: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    args = [str(tmp_path / a) if a.startswith("out.") else a for a in args]
    result = runner.invoke(app, ["upscale", str(lr_png), *args])
    assert result.exit_code != 0
    assert message in result.output
    assert list(tmp_path.iterdir()) == []


def test_unreadable_input_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    result = runner.invoke(app, ["upscale", str(bad), "-o", str(tmp_path / "o.png")])
    assert result.exit_code == 2
    assert "error (image)" in result.output
    missing = runner.invoke(
        app, ["upscale", str(tmp_path / "nope.png"), "-o", str(tmp_path / "o.png")]
    )
    assert missing.exit_code == 2 and "cannot read" in missing.output
    assert not (tmp_path / "o.png").exists()


@pytest.mark.usefixtures("builtin_data_dir")
def test_models_list_shows_the_five_built_ins() -> None:
    result = runner.invoke(app, ["models", "list"])
    assert result.exit_code == 0, result.output
    for model_id, arch, scale in [
        ("realesrgan-x4plus", "ESRGAN", "x4"),
        ("realesrgan-x4plus-anime", "ESRGAN", "x4"),
        ("realesr-animevideov3-x2", "Compact", "x2"),
        ("realesr-animevideov3-x3", "Compact", "x3"),
        ("realesr-animevideov3-x4", "Compact", "x4"),
    ]:
        line = next(line for line in result.output.splitlines() if f" {model_id} " in line)
        assert arch in line and scale in line


def test_models_import_and_rm(tmp_path: Path) -> None:
    from tests.utils.models import write_tiny_compact

    param, _ = write_tiny_compact(tmp_path, fp16=True)
    result = runner.invoke(app, ["models", "import", str(param), "--id", "tiny"])
    assert result.exit_code == 0, result.output
    assert "imported tiny: Compact x2" in result.output
    removed = runner.invoke(app, ["models", "rm", "tiny"])
    assert removed.exit_code == 0 and "removed tiny" in removed.output
    again = runner.invoke(app, ["models", "rm", "tiny"])
    assert again.exit_code == 1 and "no model 'tiny'" in again.output


def test_models_import_refuses_unknown_files_and_changes_nothing(tmp_path: Path) -> None:
    from assetbox.models.store import model_store

    bad = tmp_path / "weights.bin"
    bad.write_bytes(b"\0" * 100)
    result = runner.invoke(app, ["models", "import", str(bad)])
    assert result.exit_code == 2
    assert "weights.bin is refused" in result.output and "ncnn .param" in result.output
    assert model_store().list() == []


def test_an_interrupted_upscale_resumes_where_it_stopped(builtin_data_dir, tmp_path: Path) -> None:
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import time

    from assetbox.engine.jobs import UnitStatus
    from assetbox.engine.store import JobStore

    data_dir = tmp_path / "data"
    shutil.copytree(builtin_data_dir / "models", data_dir / "models")
    source = tmp_path / "in.png"
    Image.fromarray(photo("coffee")[:160, :200]).save(source)
    command = [
        sys.executable, "-m", "assetbox.cli", "upscale", str(source),
        "-o", str(tmp_path / "out.png"),
        "--model", "realesr-animevideov3-x2", "--tile", "16", "--batch", "1",
    ]  # fmt: skip
    env = {**os.environ, "ASSETBOX_DATA_DIR": str(data_dir)}
    proc = subprocess.Popen(command, env=env)
    deadline = time.monotonic() + 120
    while True:
        assert time.monotonic() < deadline and proc.poll() is None
        if (data_dir / "jobs.sqlite3").exists():
            store = JobStore(data_dir / "jobs.sqlite3")
            jobs = store.list()
            if jobs and sum(u.status == UnitStatus.DONE for u in store.units(jobs[0].id)) >= 3:
                break
            store.close()
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "out.png").exists()
    job_id = jobs[0].id
    finished_before = {u.index for u in store.units(job_id) if u.status == UnitStatus.DONE}

    subprocess.run(command, env=env, check=True, timeout=300)
    job = store.get(job_id)
    assert job.status == "succeeded" and job.progress.resumed == len(finished_before)
    assert all(store.units(job_id)[i].attempts == 1 for i in finished_before)
    resumed = read(tmp_path / "out.png")

    fresh_env = {**env, "ASSETBOX_DATA_DIR": str(tmp_path / "fresh")}
    shutil.copytree(builtin_data_dir / "models", tmp_path / "fresh" / "models")
    command[command.index(str(tmp_path / "out.png"))] = str(tmp_path / "fresh.png")
    subprocess.run(command, env=fresh_env, check=True, timeout=300)
    np.testing.assert_array_equal(resumed, read(tmp_path / "fresh.png"))
