"""The Models tab in a browser: the list (by kind), a 200 MB upload in chunks with a progress
bar, a delete with its confirmation, and the same upload through `assetbox ui --server`'s relay."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from playwright.sync_api import expect

from tests.ui.conftest import open_tab, shoot

# SD 1.5's UNet attention layers: (block, width, transformer count); cross-attention keys and
# values read the 768-wide CLIP-L text embedding.
SD15_ATTENTIONS = [
    *[(f"down_blocks_{b}", w, 2) for b, w in enumerate((320, 640, 1280))],
    ("mid_block", 1280, 1),
    *[(f"up_blocks_{b}", w, 3) for b, w in zip((1, 2, 3), (1280, 640, 320), strict=True)],
]
SD15_TEXT_WIDTH = 768


def write_sd15_lora(path: Path, rank: int) -> int:
    """A kohya-layout SD 1.5 LoRA (fp16) on every UNet attention projection at `rank`; its
    size in bytes. Rank 512 gives about 204 MB. The up weights are zero, as training starts,
    so the file is an honest untrained LoRA that detection reads as sd15 by its cross-attention
    width."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    tensors: dict[str, np.ndarray] = {}
    for block, width, count in SD15_ATTENTIONS:
        for index in range(count):
            prefix = f"lora_unet_{block}_attentions_{index}_transformer_blocks_0"
            for attention in ("attn1", "attn2"):
                for projection in ("to_q", "to_k", "to_v", "to_out_0"):
                    cross = attention == "attn2" and projection in ("to_k", "to_v")
                    inputs = SD15_TEXT_WIDTH if cross else width
                    name = f"{prefix}_{attention}_{projection}"
                    down = rng.standard_normal((rank, inputs), dtype=np.float32) / inputs
                    tensors[f"{name}.lora_down.weight"] = down.astype(np.float16)
                    tensors[f"{name}.lora_up.weight"] = np.zeros((width, rank), np.float16)
                    tensors[f"{name}.alpha"] = np.array(rank, np.float16)
    save_file(tensors, str(path))
    return path.stat().st_size


def models_table(page):
    return page.locator("#ab-models-table")


def upload_status(page):
    return page.locator("#ab-model-uploader").get_by_role("status")


def upload(page, path: Path, kind: str) -> None:
    """Choose `path` in the uploader, pick `kind`, and press Upload."""
    page.get_by_label("Model file").set_input_files(str(path))
    page.get_by_label("Upload kind").select_option(kind)
    page.get_by_role("button", name="Upload", exact=True).click()


def test_the_list_loads_on_open_and_filters_by_kind(page, api) -> None:
    open_tab(page, "Models")
    table = models_table(page)
    # Loaded when the page opened: no click on Refresh.
    expect(table.get_by_role("row").filter(has_text="tiny-sdxl").first).to_be_visible()
    expect(table.get_by_role("row").filter(has_text="realesr-animevideov3-x2")).to_be_visible()
    page.get_by_label("Kind", exact=True).click()
    page.get_by_role("listbox").get_by_role("option", name="lora", exact=True).click()
    expect(table.get_by_role("row").filter(has_text="realesr-animevideov3-x2")).to_have_count(0)
    loras = [m["id"] for m in api.models(kind="lora")]
    assert loras
    for model_id in loras:
        expect(table.get_by_role("row").filter(has_text=model_id)).to_contain_text("lora")
    # The header row and one per LoRA: nothing of another kind.
    expect(table.get_by_role("row")).to_have_count(len(loras) + 1)
    shoot(page, "ui-models.png")


def test_a_200_mb_lora_uploads_in_chunks_and_is_deleted_after_confirmation(
    page, api, tmp_path: Path
) -> None:
    path = tmp_path / "Big Style.safetensors"
    size = write_sd15_lora(path, rank=512)
    assert size > 200 * 1000**2
    puts: list[str] = []
    page.on(
        "request",
        lambda request: (
            puts.append(request.url)
            if request.method == "PUT" and "/v1/models/uploads/" in request.url
            else None
        ),
    )
    open_tab(page, "Models")
    upload(page, path, "lora")
    # Seen part-way, its percentage written on the bar.
    page.wait_for_function(
        """() => {
            const bar = document.querySelector("[role=progressbar][aria-label=Upload]");
            const now = Number(bar.getAttribute("aria-valuenow"));
            return now >= 1 && now <= 99 && bar.textContent.includes(now + "%");
        }"""
    )
    expect(upload_status(page)).to_have_text("Added big-style (lora, sd15).", timeout=120_000)
    expect(page.get_by_role("progressbar", name="Upload")).to_have_attribute("aria-valuenow", "100")
    assert len(puts) == -(-size // (8 * 1024**2)) > 1  # one PUT per 8 MiB chunk
    row = models_table(page).get_by_role("row").filter(has_text="big-style")
    expect(row).to_contain_text("sd15")
    expect(row).to_contain_text(f"{size / 1000**2:.1f} MB")
    stored = {m["id"]: m for m in api.models()}["big-style"]
    assert (stored["kind"], stored["family"], stored["size"]) == ("lora", "sd15", size)

    row.get_by_text("big-style").click()
    expect(page.get_by_label("Selected model")).to_have_value("big-style")
    page.get_by_role("button", name="Delete", exact=True).click()
    confirm = page.get_by_role("button", name="Confirm delete big-style")
    # Nothing is deleted before the confirmation.
    expect(confirm).to_be_visible()
    assert "big-style" in [m["id"] for m in api.models()]
    confirm.click()
    page.get_by_text("Deleted big-style (lora,").wait_for()
    expect(row).to_have_count(0)
    expect(confirm).to_be_hidden()
    assert "big-style" not in [m["id"] for m in api.models()]


def test_an_upload_through_the_standalone_ui_lands_in_the_service(
    browser, api, relay_ui: str, builtin_store, tmp_path: Path
) -> None:
    path = tmp_path / "Relayed Compact.safetensors"
    shutil.copyfile(builtin_store.path("realesr-animevideov3-x2") / "model.safetensors", path)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(60_000)
    try:
        page = context.new_page()
        sent: list[str] = []
        page.on(
            "request",
            lambda request: sent.append(request.url) if "/v1/models/" in request.url else None,
        )
        page.goto(f"{relay_ui}/ui/")
        open_tab(page, "Models")
        upload(page, path, "upscaler")
        expect(upload_status(page)).to_have_text(
            "Added relayed-compact (upscaler).", timeout=60_000
        )
        # Every upload request went to the UI's own origin, which relayed it.
        assert sent and all(url.startswith(relay_ui + "/v1/models/uploads") for url in sent)
        expect(
            page.locator("#ab-models-table").get_by_role("row").filter(has_text="relayed-compact")
        ).to_be_visible()
        stored = {m["id"]: m for m in api.models()}["relayed-compact"]
        assert (stored["kind"], stored["architecture"]) == ("upscaler", "Compact")
    finally:
        context.close()
        if "relayed-compact" in [m["id"] for m in api.models()]:
            api.delete_model("relayed-compact")
