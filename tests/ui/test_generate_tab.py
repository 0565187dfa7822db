"""The Generate tab: the form as the request (through Gradio's API), the service's refusals
naming the field, and in the browser the images with their seeds and two sessions generating
at once."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime

import pytest
from gradio_client import Client as GradioClient
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from playwright.sync_api import expect

from assetbox.models.store import ModelManifest
from assetbox.ui.generate import (
    diffusion_fields,
    family_placeholders,
    guidance_notes,
    lora_refs,
    reference_rows,
    references_field,
)
from tests.ui.conftest import open_tab, queued_request, shoot

FAST = {"width": "64", "height": "64", "steps": "2"}
# How long a browser test waits for a job's visible end (the first job loads its model).
JOB_MS = 120_000


def generate_tab(page):
    """The Generate tab, opened, with its checkpoints loaded."""
    open_tab(page, "Generate")
    tab = page.locator("#ab-generate")
    expect(tab.get_by_role("combobox", name="Model")).to_have_value("tiny-sd15 · sd15")
    return tab


def fill(tab, prompts: str, **fields: str) -> None:
    tab.get_by_label("Prompts").fill(prompts)
    for label, value in fields.items():
        tab.get_by_label(label.capitalize(), exact=True).fill(value)


@pytest.fixture(scope="module")
def gradio(ui_server: str) -> GradioClient:
    """Gradio's own client on the UI: the tab's handlers as the browser calls them."""
    return GradioClient(f"{ui_server}/ui/", verbose=False)


def call_generate(gradio: GradioClient, **form):
    values = {
        "key": "",
        "model": "tiny-sd15",
        "prompts": "a red cube",
        "negative_prompt": "",
        "width": "64",
        "height": "64",
        "steps": "2",
        "guidance": "",
        "seed": "",
        "sampler": "default",
        "images_per_prompt": 1,
        "loras": {"headers": ["LoRA", "weight"], "data": [["sd15-a", 0]]},
        "reference_images": [],
        "reference_weights": {"headers": ["reference", "weight"], "data": []},
        "ip_adapter": "none",
        "ip_image": None,
        "ip_scale": 0.6,
    } | form
    return gradio.predict(*values.values(), api_name="/generate")


def test_empty_fields_are_left_to_the_service():
    fields = diffusion_fields(
        "tiny-sd15", "\n a cat \n\n  a dog\n", "  ", "", " ", "", "", "", "default", 1,
        [["sd15-a", 0], ["sd15-b", None], ["", 1]],
    )  # fmt: skip
    assert fields == {
        "model": "tiny-sd15",
        "prompts": ["a cat", "a dog"],
        "num_images_per_prompt": 1,
    }


def test_typed_values_become_the_request_and_bad_ones_pass_through():
    fields = diffusion_fields(
        "tiny-sdxl", "x", "blurry", "1024", "768", "20", "4.5", "7", "ddim", 3,
        [["sdxl-a", 0.8], ["sdxl-b", "-1"]],
    )  # fmt: skip
    assert fields == {
        "model": "tiny-sdxl",
        "prompts": ["x"],
        "negative_prompt": "blurry",
        "width": 1024,
        "height": 768,
        "steps": 20,
        "guidance": 4.5,
        "seed": 7,
        "sampler": "ddim",
        "num_images_per_prompt": 3,
        "loras": [{"name": "sdxl-a", "weight": 0.8}, {"name": "sdxl-b", "weight": -1.0}],
    }
    # Not a number: sent as typed, for the service to refuse naming the field.
    assert diffusion_fields("m", "x", "", "wide", "", "", "", "", "", 1, [])["width"] == "wide"
    assert lora_refs(None) == []


def test_every_field_reaches_the_job_and_each_image_shows_its_seed(gradio, api, ui_data_dir):
    job_id, bars, gallery = call_generate(
        gradio,
        prompts="a red cube\na blue ball",
        negative_prompt="blurry",
        guidance="5.5",
        seed="1234",
        sampler="ddim",
        images_per_prompt=2,
        loras={"headers": ["LoRA", "weight"], "data": [["sd15-a", 0.5]]},
    )
    job = api.job(job_id)
    assert job["kind"] == "generate" and job["status"] == "succeeded"
    request = queued_request(ui_data_dir, job_id)
    assert request["prompts"] == ["a red cube", "a blue ball"]
    assert (request["width"], request["height"], request["steps"]) == (64, 64, 2)
    assert (request["guidance"], request["seed"], request["sampler"]) == (5.5, 1234, "ddim")
    assert request["negative_prompt"] == "blurry"
    assert request["num_images_per_prompt"] == 2
    assert request["loras"] == [{"name": "sd15-a", "weight": 0.5}]
    assert [item["caption"] for item in gallery] == [
        "prompt 1 · seed 1234",
        "prompt 1 · seed 1235",
        "prompt 2 · seed 1236",
        "prompt 2 · seed 1237",
    ]
    assert [o["seed"] for o in job["outputs"]] == [1234, 1235, 1236, 1237]
    assert bars.count("ab-done") == 2  # a bar per prompt, both full


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"width": "65"}, "`width`"),
        ({"steps": "many"}, "`steps`"),
        ({"prompts": "\n"}, "`prompts`"),
        ({"loras": {"headers": ["LoRA", "weight"], "data": [["sdxl-a", 1]]}}, "`loras.0.name`"),
    ],
)
def test_a_refusal_is_shown_naming_the_field(gradio, api, form, field):
    before = len(api.jobs(limit=500))
    with pytest.raises(AppError, match=re.escape(field)):
        call_generate(gradio, **form)
    assert len(api.jobs(limit=500)) == before  # nothing was queued


def test_an_ip_adapter_with_its_image_reaches_the_job(gradio, api, ui_data_dir, tmp_path):
    prompt_image = tmp_path / "prompt.png"
    Image.new("RGB", (64, 64), "green").save(prompt_image)
    job_id, _, gallery = call_generate(
        gradio, ip_adapter="ip-adapter-sd15", ip_image=handle_file(str(prompt_image)), ip_scale=0.4
    )
    assert api.job(job_id)["status"] == "succeeded" and len(gallery) == 1
    adapter = queued_request(ui_data_dir, job_id)["ip_adapter"]
    assert (adapter["model"], adapter["scale"]) == ("ip-adapter-sd15", 0.4)
    assert adapter["image"].startswith("sha256:")
    # Without its image, generate has none to default to: the service says so.
    with pytest.raises(AppError, match=re.escape("`ip_adapter.image`")):
        call_generate(gradio, ip_adapter="ip-adapter-sd15")


def test_picking_a_model_shows_its_family_loras_and_defaults(page):
    tab = generate_tab(page)
    expect(tab.get_by_role("gridcell", name="sd15-a")).to_be_visible()
    tab.get_by_role("combobox", name="Model").click()
    # Qwen-Image-Edit-Plus edits only: the Edit tab offers it, this one does not.
    expect(page.get_by_role("option", name=re.compile("qwen_image_edit_plus"))).to_have_count(0)
    page.get_by_role("option", name="tiny-sdxl · sdxl").click()
    expect(tab.get_by_role("gridcell", name="sdxl-a")).to_be_visible()
    expect(tab.get_by_role("gridcell", name="sd15-a")).to_have_count(0)
    expect(tab.get_by_label("Width", exact=True)).to_have_attribute("placeholder", "1024 (sdxl)")
    expect(tab.get_by_role("combobox", name="Sampler")).to_have_value("default (euler)")


def test_generate_shows_the_image_and_its_seed(page, api):
    tab = generate_tab(page)
    fill(tab, "a red cube", **FAST)
    tab.get_by_role("button", name="Generate", exact=True).click()
    image = tab.get_by_role("img", name=re.compile(r"^seed \d+$"))
    expect(image).to_be_visible(timeout=JOB_MS)
    job = api.job(tab.get_by_label("Job", exact=True).input_value())
    seed = job["outputs"][0]["seed"]
    expect(image).to_have_accessible_name(f"seed {seed}")
    expect(tab.get_by_text(f"seed {seed}", exact=True)).to_be_visible()  # the caption
    image.evaluate("img => img.decode()")
    assert image.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [64, 64]
    expect(tab.get_by_role("progressbar", name="prompt 1: a red cube")).to_have_attribute(
        "aria-valuenow", "100"
    )
    shoot(page, "ui-generate.png")


def test_two_sessions_generating_at_once_both_progress(browser, ui_server, api):
    contexts = [browser.new_context(viewport={"width": 1400, "height": 1000}) for _ in range(2)]
    ids: list[str] = []
    try:
        tabs = []
        for context in contexts:
            context.set_default_timeout(60_000)
            page = context.new_page()
            page.goto(f"{ui_server}/ui/")
            tabs.append(generate_tab(page))
        # One prompt (one unit) each, so each job has a worker of its own from the start (a
        # job of several units would take both, the other waiting for one to end); the most
        # steps, so each still runs while the other's steps are watched.
        for n, tab in enumerate(tabs):
            fill(tab, f"slow {n}", width="64", height="64", steps="500")
            tab.get_by_role("button", name="Generate", exact=True).click()
        for tab in tabs:
            expect(tab.get_by_label("Job", exact=True)).not_to_have_value("", timeout=JOB_MS)
            ids.append(tab.get_by_label("Job", exact=True).input_value())
        stepping = re.compile(r"step ([1-9]\d*)/500")
        seen = []
        for tab in tabs:
            bar = tab.get_by_role("progressbar").filter(has_text=stepping).first
            expect(bar).to_be_visible(timeout=JOB_MS)
            seen.append(bar.inner_text())
        assert [api.job(i)["status"] for i in ids] == ["running", "running"]
        # Each page moves on again while both jobs still run: both advance at once.
        for tab, text in zip(tabs, seen, strict=True):
            moved = tab.get_by_role("progressbar").filter(has_text=stepping)
            expect(moved.filter(has_not_text=text).first).to_be_visible(timeout=JOB_MS)
        assert [api.job(i)["status"] for i in ids] == ["running", "running"]
        for job_id in ids:
            api.cancel(job_id)
        for tab in tabs:
            cancelled = tab.get_by_role("progressbar").filter(has_text="cancelled")
            expect(cancelled.first).to_be_visible(timeout=JOB_MS)
    finally:
        for job_id in ids:
            if api.job(job_id)["status"] not in ("succeeded", "failed", "cancelled"):
                api.cancel(job_id)
        for context in contexts:
            context.close()


def test_references_keep_their_weights_and_go_as_the_request(tmp_path):
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    for path, color in ((first, "red"), (second, "blue")):
        Image.new("RGB", (64, 64), color).save(path)
    rows = reference_rows([(str(first), None), (str(second), None)], [])
    assert rows == [["1. a.png", 1], ["2. b.png", 1]]
    # The first removed: the second keeps the weight it was given.
    assert reference_rows([(str(second), None)], [["1. a.png", 1], ["2. b.png", 0.5]]) == [
        ["1. b.png", 0.5]
    ]
    refs = references_field([(str(first), None), (str(second), None)], [["1", 1], ["2", "9"]])
    assert refs == [
        {"image": base64.b64encode(first.read_bytes()).decode(), "weight": 1},
        {"image": base64.b64encode(second.read_bytes()).decode(), "weight": 9},  # the service's
    ]
    assert references_field(None, []) == []


def manifest(family: str, **fields) -> ModelManifest:
    return ModelManifest(
        id=f"tiny-{family}", kind="checkpoint", architecture="x", family=family, source="x",
        sha256="0" * 64, size=1, added=datetime.now(UTC), **fields,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("family", "fields", "guidance", "no_guidance", "no_negative"),
    [
        ("sdxl", {}, None, False, False),
        ("flux1", {}, None, False, True),
        ("flux2_klein", {"distilled": True}, None, True, True),
        ("flux2_klein", {"distilled": False}, None, False, True),
        ("flux2", {}, None, False, True),
        ("z_image", {}, None, False, True),  # Turbo's guidance 0: no CFG
        ("z_image", {}, 2, False, False),
        ("qwen_image", {}, None, False, False),  # true CFG 4 by default
        ("qwen_image_edit_plus", {}, 1, False, True),
    ],
)
def test_the_form_says_what_the_service_takes(family, fields, guidance, no_guidance, no_negative):
    refused_guidance, refused_negative = guidance_notes(manifest(family, **fields), guidance)
    assert (refused_guidance is not None, refused_negative is not None) == (
        no_guidance,
        no_negative,
    )
    steps, guidance_hint, negative_hint = family_placeholders(manifest(family, **fields), guidance)
    assert negative_hint == (refused_negative or "optional")
    assert (guidance_hint is None) == no_guidance
    if no_guidance:
        assert "CFG" in refused_guidance and "`" not in refused_guidance
    if family == "flux2_klein":
        assert steps == ("4 (flux2_klein)" if fields["distilled"] else "50 (flux2_klein)")


def test_flux2_klein_generates_with_two_weighted_references(page, api, ui_data_dir, tmp_path):
    tab = generate_tab(page)
    references = tab.locator("#ab-references")
    expect(references).to_be_hidden()  # sd15 takes none
    tab.get_by_text("IP-Adapter (image prompt)").click()
    tab.get_by_role("combobox", name="IP-Adapter", exact=True).click()
    expect(page.get_by_role("option", name="ip-adapter-sd15")).to_be_visible()  # sd15's
    page.keyboard.press("Escape")
    tab.get_by_role("combobox", name="Model").click()
    page.get_by_role("option", name="tiny-flux2_klein · flux2_klein").click()
    expect(references).to_be_visible()
    expect(tab.get_by_text("IP-Adapter (image prompt)")).to_be_hidden()
    negative = tab.get_by_label("Negative prompt", exact=True)
    expect(negative).to_have_attribute("placeholder", re.compile("no effect on FLUX.2 klein"))
    paths = [tmp_path / "red.png", tmp_path / "blue.png"]
    for path, color in zip(paths, ("red", "blue"), strict=True):
        Image.new("RGB", (64, 64), color).save(path)
    references.locator("input[type=file]").set_input_files(paths)
    weights = tab.locator("#ab-reference-weights")
    expect(weights.get_by_role("gridcell", name="2. blue.png")).to_be_visible()
    cell = weights.get_by_role("gridcell").nth(3)  # row 2's weight
    cell.dblclick()
    cell.locator("input, textarea").first.fill("0.5")
    cell.locator("input, textarea").first.press("Enter")
    fill(tab, "a red cube", **FAST)
    tab.get_by_role("button", name="Generate", exact=True).click()
    image = tab.get_by_role("img", name=re.compile(r"^seed \d+$"))
    expect(image).to_be_visible(timeout=JOB_MS)
    image.evaluate("img => img.decode()")
    assert image.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [64, 64]
    request = queued_request(ui_data_dir, tab.get_by_label("Job", exact=True).input_value())
    assert request["model"] == "tiny-flux2_klein"
    assert [r["weight"] for r in request["references"]] == [1.0, 0.5]
    assert all(r["image"].startswith("sha256:") for r in request["references"])
    shoot(page, "ui-generate-references.png")
