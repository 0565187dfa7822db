"""The Edit tab: the edit's own fields as the request (strength, ControlNet and its image),
refusals naming the field, and in the browser an uploaded photo edited."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from gradio_client import Client as GradioClient
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from playwright.sync_api import expect

from assetbox.models.store import FAMILIES
from assetbox.ui.edit import edit_fields, has_edit, instruction_fields, instruction_limit
from tests.ui.conftest import open_tab, queued_request, shoot
from tests.utils.images import photo

# How long a browser test waits for a job's visible end (the first job loads its model).
JOB_MS = 120_000


def edit_tab(page):
    """The Edit tab, opened, with its checkpoints loaded."""
    open_tab(page, "Edit")
    tab = page.locator("#ab-edit")
    expect(tab.get_by_role("combobox", name="Model")).to_have_value("tiny-sd15 · sd15")
    return tab


def small_photo(folder: Path, name: str = "astronaut", size: tuple[int, int] = (64, 48)) -> Path:
    """A real photo shrunk to `size`, as a PNG file."""
    path = folder / f"{name}.png"
    Image.fromarray(photo(name)).resize(size, Image.Resampling.LANCZOS).save(path)
    return path


@pytest.fixture(scope="module")
def gradio(ui_server: str) -> GradioClient:
    """Gradio's own client on the UI: the tab's handlers as the browser calls them."""
    return GradioClient(f"{ui_server}/ui/", verbose=False)


def call_edit(gradio: GradioClient, image: Path | None, **form):
    values = {
        "key": "",
        "image": handle_file(str(image)) if image else None,
        "model": "tiny-sd15",
        "prompts": "",
        "negative_prompt": "",
        "width": "",
        "height": "",
        "steps": "4",
        "guidance": "",
        "seed": "",
        "sampler": "default",
        "images_per_prompt": 1,
        "loras": {"headers": ["LoRA", "weight"], "data": []},
        "strength": 0.5,
        "controlnet": "none",
        "conditioning_scale": 1.0,
        "control_image": None,
        "ip_adapter": "none",
        "ip_image": None,
        "ip_scale": 0.6,
        "instruction": "",
        "instruction_images": [],
        "true_cfg_scale": "",
        "condition_pixels": "",
    } | form
    return gradio.predict(*values.values(), api_name="/edit")


def test_edit_fields_add_strength_and_controlnet(tmp_path):
    control = small_photo(tmp_path, "coffee")
    shared = {"model": "tiny-sd15", "prompts": [], "steps": 4}
    assert edit_fields(shared, 0.3, "none", 1.0, None) == {
        "model": "tiny-sd15",
        "steps": 4,
        "strength": 0.3,
    }
    fields = edit_fields(shared | {"prompts": ["a"]}, 0.8, "net", 0.7, str(control))
    assert fields["prompts"] == ["a"]
    assert fields["controlnet"] == {
        "model": "net",
        "conditioning_scale": 0.7,
        "image": base64.b64encode(control.read_bytes()).decode(),
    }
    # No control image uploaded: none sent, the service uses the input image.
    assert edit_fields(shared, 0.8, "net", 1.0, None)["controlnet"] == {
        "model": "net",
        "conditioning_scale": 1.0,
    }


def test_controlnet_with_its_own_image_reaches_the_job(gradio, api, ui_data_dir, tmp_path):
    image, control = small_photo(tmp_path), small_photo(tmp_path, "coffee")
    job_id, bars, gallery = call_edit(
        gradio,
        image,
        prompts="an astronaut",
        seed="99",
        strength=0.75,
        controlnet="tiny-sd15-controlnet",
        conditioning_scale=0.7,
        control_image=handle_file(str(control)),
    )
    job = api.job(job_id)
    assert job["kind"] == "edit" and job["status"] == "succeeded"
    request = queued_request(ui_data_dir, job_id)
    assert request["strength"] == 0.75 and request["seed"] == 99
    assert (request["width"], request["height"]) == (64, 48)  # the input's size
    net = request["controlnet"]
    assert (net["model"], net["conditioning_scale"]) == ("tiny-sd15-controlnet", 0.7)
    assert net["image"].startswith("sha256:") and net["image"] != request["image"]
    assert [item["caption"] for item in gallery] == ["seed 99"]
    assert "ab-done" in bars


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"strength": 0.1}, "`strength`"),  # 0.1 of 4 steps runs none
        ({"width": "60"}, "`width`"),
        ({"controlnet": "tiny-sdxl-controlnet"}, "`controlnet.model`"),
    ],
)
def test_a_refusal_is_shown_naming_the_field(gradio, tmp_path, form, field):
    with pytest.raises(AppError, match=re.escape(field)):
        call_edit(gradio, small_photo(tmp_path), **form)


def test_no_image_is_refused_before_the_service(gradio):
    with pytest.raises(AppError, match=re.escape("`image`")):
        call_edit(gradio, None)


def test_an_uploaded_photo_is_edited(page, api, ui_data_dir, tmp_path):
    tab = edit_tab(page)
    # A file input has no role or label; the first in the tab is the input image's.
    tab.locator("input[type=file]").first.set_input_files(small_photo(tmp_path))
    expect(tab.get_by_role("button", name="Remove Image")).to_be_visible()  # uploaded
    tab.get_by_label("Prompts").fill("an astronaut in the snow")
    tab.get_by_label("Steps", exact=True).fill("4")
    strength = tab.get_by_role("spinbutton", name=re.compile("Strength"))
    strength.fill("0.5")
    strength.press("Enter")
    tab.get_by_role("button", name="Edit", exact=True).click()
    result = tab.get_by_role("img", name=re.compile(r"^seed \d+$"))
    expect(result).to_be_visible(timeout=JOB_MS)
    job_id = tab.get_by_label("Job", exact=True).input_value()
    listed = {job["id"]: job for job in api.jobs(limit=50)}
    assert listed[job_id]["kind"] == "edit" and listed[job_id]["status"] == "succeeded"
    assert queued_request(ui_data_dir, job_id)["strength"] == 0.5
    expect(result).to_have_accessible_name(f"seed {listed[job_id]['outputs'][0]['seed']}")
    result.evaluate("img => img.decode()")
    assert result.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [64, 48]
    shoot(page, "ui-edit.png")


def test_instruction_fields_take_the_instruction_and_images(tmp_path):
    first, second = small_photo(tmp_path), small_photo(tmp_path, "coffee")
    shared = {"model": "m", "prompts": ["ignored"], "steps": 2}
    fields = instruction_fields(shared, " make it red ", [str(first), str(second)], "2.5", "")
    assert fields == {
        "model": "m",
        "steps": 2,
        "instruction": "make it red",
        "images": [base64.b64encode(p.read_bytes()).decode() for p in (first, second)],
        "true_cfg_scale": 2.5,
    }
    assert [f for f in FAMILIES if has_edit(f)] == [
        "sd15", "sdxl", "flux1", "flux2_klein", "flux2", "qwen_image_edit", "qwen_image_edit_plus",
    ]  # fmt: skip
    assert [instruction_limit(f) for f in ("sd15", "qwen_image_edit", "qwen_image_edit_plus")] == [
        None,
        1,
        3,
    ]


def test_qwen_image_edit_plus_edits_two_images_by_instruction(page, api, ui_data_dir, tmp_path):
    tab = edit_tab(page)
    instruction_form = tab.locator("#ab-instruction")
    expect(instruction_form).to_be_hidden()
    tab.get_by_role("combobox", name="Model").click()
    page.get_by_role("option", name="tiny-qwen_image_edit_plus · qwen_image_edit_plus").click()
    expect(instruction_form).to_be_visible()
    # img2img's inputs give way: no input image, prompts, strength or guidance (true CFG).
    for hidden in ("Input image", "Prompts", "Guidance"):
        expect(tab.get_by_label(hidden, exact=True)).to_have_count(0)
    expect(tab.get_by_text("Strength", exact=True)).to_be_hidden()
    expect(tab.get_by_text("Input images (1 to 3 for qwen_image_edit_plus)")).to_be_visible()
    tab.locator("#ab-edit-images input[type=file]").set_input_files(
        [small_photo(tmp_path), small_photo(tmp_path, "coffee", (48, 64))]
    )
    expect(tab.locator("#ab-edit-images img")).to_have_count(2)  # the thumbnails
    tab.get_by_label("Instruction", exact=True).fill("put the cup in the astronaut's hand")
    # A small conditioning area: the pipelines' own 1 MP takes the tiny model a minute.
    tab.get_by_label("Conditioning area (pixels)").fill("4096")
    negative = tab.get_by_label("Negative prompt", exact=True)
    expect(negative).to_have_attribute("placeholder", "optional")  # true CFG 4 by default
    tab.get_by_label("True CFG scale").fill("1")
    expect(negative).to_have_attribute("placeholder", re.compile("no effect .* at guidance 1"))
    for label, value in (("Width", "64"), ("Height", "48"), ("Steps", "2")):
        tab.get_by_label(label, exact=True).fill(value)
    tab.get_by_role("button", name="Edit", exact=True).click()
    result = tab.get_by_role("img", name=re.compile(r"^seed \d+$"))
    expect(result).to_be_visible(timeout=JOB_MS)
    result.evaluate("img => img.decode()")
    assert result.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [64, 48]
    request = queued_request(ui_data_dir, tab.get_by_label("Job", exact=True).input_value())
    assert request["instruction"] == "put the cup in the astronaut's hand"
    assert request["prompts"] == [request["instruction"]]
    assert len(request["images"]) == 2 and request.get("image") is None
    assert (request["condition_pixels"], request["guidance"]) == (4096, 1.0)
    shoot(page, "ui-edit-instruction.png")


def test_img2img_ip_adapter_defaults_to_the_input_image(gradio, api, ui_data_dir, tmp_path):
    job_id, _, gallery = call_edit(gradio, small_photo(tmp_path), ip_adapter="ip-adapter-sd15")
    assert api.job(job_id)["status"] == "succeeded" and len(gallery) == 1
    adapter = queued_request(ui_data_dir, job_id)["ip_adapter"]
    assert (adapter["model"], adapter["scale"], adapter.get("image")) == (
        "ip-adapter-sd15",
        0.6,
        None,
    )


def test_instruction_edits_through_the_api_and_their_refusals(gradio, api, ui_data_dir, tmp_path):
    photos = ("astronaut", "coffee", "chelsea", "rocket")
    # 64 px a side: FLUX.2 takes no smaller reference.
    files = [small_photo(tmp_path, name, (64, 64)) for name in photos]
    images = [{"image": handle_file(str(path))} for path in files]
    # FLUX.2 klein: its images go as references; no Qwen fields.
    job_id, _, gallery = call_edit(
        gradio,
        None,
        model="tiny-flux2_klein",
        instruction="make it red",
        instruction_images=images[:2],
        width="64",
        height="48",
        steps="2",
    )
    assert api.job(job_id)["status"] == "succeeded" and len(gallery) == 1
    assert (api.job(job_id)["outputs"][0]["width"], api.job(job_id)["outputs"][0]["height"]) == (
        64,
        48,
    )
    request = queued_request(ui_data_dir, job_id)
    assert (request["instruction"], len(request["images"])) == ("make it red", 2)
    plus = {"model": "tiny-qwen_image_edit_plus", "instruction": "x", "steps": "2"}
    with pytest.raises(AppError, match=re.escape("`images`")):  # Plus edits at most 3
        call_edit(gradio, None, instruction_images=images, **plus)
    with pytest.raises(AppError, match=re.escape("`images`")):  # none uploaded
        call_edit(gradio, None, **plus)
