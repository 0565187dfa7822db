"""The Tile Upscale tab: plan and caption a real photo, edit the mosaic, upscale, and check the
job the service ran; and the README's screenshot of a real photo's mosaic."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect

from assetbox.client import Client
from assetbox.ui.upscale import TileEdit, tile_overrides, tile_status
from tests.ui.conftest import open_tab, queued_request, shoot
from tests.utils.images import photo


def photo_file(folder: Path, name: str, size: int) -> Path:
    path = folder / f"{name}-{size}.png"
    Image.fromarray(photo(name)).resize((size, size), Image.LANCZOS).save(path)
    return path


def choose(page, tab, label: str, option: str) -> None:
    """Pick `option` in the Gradio dropdown labelled `label`."""
    tab.get_by_label(label, exact=True).click()
    page.get_by_role("option", name=option, exact=True).click()


def plan_and_caption(page, image: Path, *, tile: int, overlap: int):
    """Open the tab, upload `image`, set the grid (scale 2, Lanczos pre-upscale) and wait for
    the mosaic; the tab's settings column (its labels repeat in other tabs)."""
    open_tab(page, "Tile Upscale")
    tab = page.locator("#ab-upscale")
    tab.locator("#ab-upscale-image input[type=file]").set_input_files(str(image))
    tab.locator("#ab-upscale-image img").first.wait_for()
    tab.get_by_label("Tile", exact=True).fill(str(tile))
    tab.get_by_label("Overlap", exact=True).fill(str(overlap))
    choose(page, tab, "Pre-upscaler", "lanczos")
    tab.get_by_role("button", name="Plan & caption").click()
    page.get_by_label("Caption 0_0").wait_for()
    return tab


def test_plan_edit_and_upscale_all_send_the_mosaics_prompts_and_keep_a_skipped_tile(
    page, api: Client, ui_data_dir: Path, tmp_path: Path
) -> None:
    image = photo_file(tmp_path, "astronaut", 128)
    # 128 px -> 256 px output in 144 px tiles overlapping by 32: a 2x2 grid (x, y at 0, 112).
    tab = plan_and_caption(page, image, tile=144, overlap=32)
    for tile_id in ("0_0", "0_1", "1_0", "1_1"):
        page.get_by_label(f"Caption {tile_id}").wait_for()
    assert page.get_by_label("Caption 2_0").count() == 0  # exactly the 2x2 grid
    # Each tile's thumbnail is loaded, and served by URL (never inlined).
    page.wait_for_function(
        "() => { const imgs = [...document.querySelectorAll('#ab-mosaic img')];"
        " return imgs.length === 4 && imgs.every(i => i.complete && i.naturalWidth >= 100); }"
    )
    for img in page.locator("#ab-mosaic img").all():
        assert img.get_attribute("src").startswith("http"), img.get_attribute("src")[:40]

    choose(page, tab, "Model", "tiny-sd15 (sd15)")
    # The family's IP-Adapter, its image left to the service's default: the input.
    tab.get_by_text("IP-Adapter (image prompt)").click()
    choose(page, tab, "IP-Adapter", "ip-adapter-sd15")
    tab.get_by_label("Style prompt").fill("oil painting")
    tab.get_by_label("Steps").fill("3")  # strength 0.35 x 3 steps: one denoising step
    tab.get_by_label("Seed").fill("7")
    page.get_by_label("Caption 0_0").fill("a red brick wall")
    page.get_by_label("Caption 1_1").fill("a golden sky")
    page.get_by_label("Skip 0_1").check()
    tab.get_by_role("button", name="Upscale all").click()

    overall = tab.get_by_role("progressbar", name="Upscale", exact=True)
    overall.and_(page.locator(".ab-done")).wait_for(timeout=300_000)
    for tile_id in ("0_0", "1_0", "1_1"):
        assert page.get_by_role("progressbar", name=f"Tile {tile_id}").inner_text().endswith("done")
    assert "kept (skipped)" in page.get_by_role("progressbar", name="Tile 0_1").inner_text()
    download = tab.get_by_role("button", name="Download result")
    download.wait_for()
    tab.locator("#ab-upscale-result img").first.wait_for()  # the before/after view

    # Through the API: the job got each tile's edited caption after the style prompt.
    (caption_job,) = api.jobs(kind="caption", limit=1)
    captioned = {c["id"]: c["caption"] for c in caption_job["result"]["captions"]}
    (job,) = api.jobs(kind="upscale", limit=1)
    assert job["status"] == "succeeded", job
    tiles = {t["id"]: t for t in job["result"]["tiles"]}
    assert tiles["0_0"]["prompt"] == "oil painting, a red brick wall"
    assert tiles["1_1"]["prompt"] == "oil painting, a golden sky"
    assert tiles["1_0"]["prompt"] == f"oil painting, {captioned['1_0'].strip()}"
    assert tiles["0_1"] == {"id": "0_1", "skip": True}
    assert {t["strength"] for k, t in tiles.items() if k != "0_1"} == {0.35}
    assert queued_request(ui_data_dir, job["id"])["ip_adapter"] == {
        "model": "ip-adapter-sd15",
        "image": None,
        "scale": 0.6,
    }

    out = np.asarray(Image.open(io.BytesIO(api.output(job["id"]))).convert("RGB")).astype(int)
    pre = np.asarray(Image.open(image).resize((256, 256), Image.LANCZOS)).astype(int)
    assert out.shape == (256, 256, 3)
    # Tile 0_1 (x 112..256, y 0..144) away from its overlaps (x < 144, y >= 112): the skipped
    # tile's own pixels are the pre-upscale; redrawn tiles are not.
    assert np.abs(out[:112, 144:] - pre[:112, 144:]).max() <= 1
    assert np.abs(out[144:, 144:] - pre[144:, 144:]).max() > 8


def test_screenshot_of_a_real_photos_mosaic(page, tmp_path: Path) -> None:
    image = photo_file(tmp_path, "astronaut", 256)
    # 256 px -> 512 px in 192 px tiles overlapping by 32: a 3x3 grid.
    tab = plan_and_caption(page, image, tile=192, overlap=32)
    page.get_by_label("Caption 2_2").wait_for()
    assert page.get_by_label("Caption 3_0").count() == 0
    # The tiny random captioner writes random tokens; a person edits them into these.
    captions = {
        "0_0": "american flag, grey studio backdrop",
        "0_1": "smiling woman, short brown hair",
        "0_2": "space shuttle model, grey backdrop",
        "1_0": "american flag, orange spacesuit shoulder",
        "1_1": "astronaut, orange spacesuit collar",
        "1_2": "space shuttle model, orange sleeve",
        "2_0": "orange spacesuit arm, mission patch",
        "2_1": "mission patches, orange spacesuit chest",
        "2_2": "black helmet, white reflection",
    }
    for tile_id, text in captions.items():
        page.get_by_label(f"Caption {tile_id}").fill(text)
    tab.get_by_label("Style prompt").fill("photo, sharp focus, natural light")
    page.get_by_label("Skip 0_0").check()
    page.get_by_label("Select 1_1").check()
    expect(page.get_by_label("Caption 1_1")).to_have_value(captions["1_1"])
    shoot(page, "ui-tile-upscale.png")


# -- the mosaic's rules, without a browser --------------------------------------------------------


def edit(tile_id: str, caption: str = "", strength: float = 0.35, **flags: bool) -> TileEdit:
    return TileEdit(
        tile_id, caption, strength, flags.get("skip", False), flags.get("selected", False)
    )


def test_overrides_carry_captions_strengths_and_skips() -> None:
    tiles = [
        edit("0_0", "a wall"),
        edit("0_1", "sky", strength=0.6),
        edit("1_0", "grass", skip=True),
        edit("1_1", "  "),
    ]
    assert tile_overrides("photo", 0.35, tiles, only_selected=False) == {
        "0_0": {"prompt": "photo, a wall"},
        "0_1": {"prompt": "photo, sky", "strength": 0.6},
        "1_0": {"skip": True},
    }
    assert tile_overrides("", 0.35, tiles[:1], only_selected=False) == {"0_0": {"prompt": "a wall"}}


def test_upscale_selected_skips_the_others_and_needs_a_selection() -> None:
    import gradio as gr

    tiles = [edit("0_0", "a wall", selected=True), edit("0_1", "sky")]
    assert tile_overrides("", 0.35, tiles, only_selected=True) == {
        "0_0": {"prompt": "a wall"},
        "0_1": {"skip": True},
    }
    with pytest.raises(gr.Error, match="no tile is selected"):
        tile_overrides("", 0.35, [edit("0_0")], only_selected=True)


@pytest.mark.parametrize(
    ("job", "unit", "expected"),
    [
        ({"status": "queued"}, None, ("queued", 0.0, "planning")),
        ({"status": "running", "units": {}}, 1, ("queued", 0.0, "queued")),
        (
            {
                "status": "running",
                "units": {1: "running"},
                "progress": {"unit": 1, "step": 2, "steps": 4},
            },
            1,
            ("running", 0.5, "running · step 2/4"),
        ),
        (
            {
                "status": "running",
                "units": {1: "running"},
                "progress": {"unit": 0, "step": 2, "steps": 4},
            },
            1,
            ("running", 0.0, "running"),
        ),
        ({"status": "running", "units": {1: "done"}}, 1, ("done", 1.0, "done")),
        ({"status": "running", "units": {1: "pending"}}, 1, ("queued", 0.0, "queued (retrying)")),
        ({"status": "failed", "units": {1: "failed"}}, 1, ("failed", 0.0, "failed")),
        ({"status": "cancelled", "units": {}}, 1, ("failed", 0.0, "cancelled")),
    ],
)
def test_a_tiles_status_follows_its_unit(job, unit, expected) -> None:
    assert tile_status(job, unit, skipped=False) == expected
