"""The Generate tab (text to image, ``POST /v1/generate``), and the diffusion form and job
runner it shares with the Edit tab: checkpoint picker, prompts, size, steps, guidance, seed,
sampler, LoRAs; a progress bar per prompt while the job runs; the images with their seeds.

A picked checkpoint shapes the form: its family's samplers, defaults and LoRAs; what the service
says of a negative prompt and of guidance on it (asked of kinds/diffusion.py's own checks, never
restated here); for FLUX.2 the reference images, each with its weight (``references``); for
SD 1.5 and SDXL the IP-Adapter (``ip_adapter``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import gradio as gr
from gradio.context import get_blocks_context

from assetbox.client import Client
from assetbox.errors import InvalidInput
from assetbox.kinds.diffusion import (
    DEFAULTS,
    LORA_GROUP,
    check_family_options,
    defaults_for,
    fill_guidance,
)
from assetbox.models.store import ModelManifest, ModelStore
from assetbox.pipelines.diffusion import (
    DEFAULT_SAMPLER,
    FLOW_FAMILIES,
    INSTRUCTION_EDIT_IMAGES,
    samplers_for,
)
from assetbox.pipelines.flux2 import FLUX2_FAMILIES, MAX_REFERENCE_WEIGHT, MAX_REFERENCES
from assetbox.ui.common import (
    IPAdapterForm,
    Service,
    b64_file,
    follow,
    gallery_paths,
    ip_adapter_field,
    ip_adapter_form,
    ip_adapter_updates,
    lora_refs,
    lora_table,
    relay,
    save_output,
    typed,
    unit_bars,
)

DEFAULT = "default"  # the sampler choice that leaves the sampler to the service
# Until a checkpoint is picked, the samplers of the SD families (flux1 has its own two).
ALL_SAMPLERS = list(samplers_for("sd15"))


def checkpoint_choices(models: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Dropdown choices for checkpoints, grouped by family in the store's order of families
    (sd15, sdxl, flux1, flux2_klein, ...): ``("tiny-sd15 · sd15", id)``."""
    order = {family: n for n, family in enumerate(DEFAULTS)}
    ordered = sorted(models, key=lambda m: (order.get(m.get("family") or "", len(order)), m["id"]))
    return [(f"{m['id']} · {m.get('family') or '?'}", m["id"]) for m in ordered]


def manifest_of(models: dict[str, Any], model: str | None) -> ModelManifest | None:
    """The picked checkpoint's manifest, from the listing the picker was filled with."""
    found = models.get(model or "")
    if not isinstance(found, dict):
        return None
    manifest = ModelManifest.model_validate(found)
    return manifest if manifest.family in DEFAULTS else None


def _refusal(check: Callable[[], None], field: str) -> str | None:
    """The service's message when `check` refuses naming `field` (backticks dropped, as it
    shows as plain text), else None."""
    try:
        check()
    except InvalidInput as error:
        if error.field == field:
            return str(error).replace("`", "")
    return None


def guidance_notes(manifest: ModelManifest, guidance: Any = None) -> tuple[str | None, str | None]:
    """What the service says of a guidance and of a negative prompt on this checkpoint, at the
    `guidance` typed (a number; else the default): (its refusal of any guidance, its refusal of
    a negative prompt), None where it takes one. Asked of the submit checks themselves
    (`check_family_options`, `fill_guidance`), so the form follows them as they change."""
    # No LoRAs in the probes: the store is never read.
    store = cast(ModelStore, None)

    def probe(guidance: float | None, negative: str | None) -> SimpleNamespace:
        return SimpleNamespace(loras=[], steps=None, guidance=guidance, negative_prompt=negative)

    no_guidance = _refusal(lambda: fill_guidance(store, manifest, probe(1.0, None)), "guidance")
    given = guidance if isinstance(guidance, int | float) and not no_guidance else None

    def negative() -> None:
        check_family_options(store, manifest, None, [], "x")
        fill_guidance(store, manifest, probe(given, "x"))

    return no_guidance, _refusal(negative, "negative_prompt")


def prompt_lines(text: str | None) -> list[str]:
    """One prompt per non-empty line."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def diffusion_fields(
    model: str | None,
    prompts: str | None,
    negative_prompt: str | None,
    width: str | None,
    height: str | None,
    steps: str | None,
    guidance: str | None,
    seed: str | None,
    sampler: str | None,
    images_per_prompt: float | None,
    loras: Any,
) -> dict[str, Any]:
    """The form as the request's fields. Empty fields are left out, so the service applies the
    family's defaults (and draws a seed); values are passed as typed, so the service, not the
    UI, refuses a bad one and names its field."""
    fields: dict[str, Any] = {"model": model or "", "prompts": prompt_lines(prompts)}
    if negative_prompt and negative_prompt.strip():
        fields["negative_prompt"] = negative_prompt.strip()
    numbers = {"width": width, "height": height, "steps": steps, "guidance": guidance}
    for name, text in {**numbers, "seed": seed}.items():
        value = typed(text)
        if value is not None:
            fields[name] = value
    if sampler and sampler != DEFAULT:
        fields["sampler"] = sampler
    if images_per_prompt is not None:
        fields["num_images_per_prompt"] = typed(images_per_prompt)
    refs = lora_refs(loras)
    if refs:
        fields["loras"] = refs
    return fields


def unit_labels(prompts: list[str], images_per_prompt: int) -> list[str]:
    """A progress bar's label per unit: a diffusion job runs one unit per prompt, that prompt's
    images in one batch (kinds/diffusion.py), so its bars are the prompts'."""
    labels = []
    for index, prompt in enumerate(prompts or [""]):
        short = prompt if len(prompt) <= 48 else prompt[:47] + "…"
        label = f"prompt {index + 1}: {short}" if short else f"prompt {index + 1}"
        if images_per_prompt > 1:
            label += f" ({images_per_prompt} images)"
        labels.append(label)
    return labels


def gallery_items(
    service: Service, api: Client, job: dict[str, Any], prompts: int, per_prompt: int
) -> list[tuple[str, str]]:
    """The job's images downloaded for Gradio, each captioned with its seed (and, of several
    `prompts`, its prompt's number: outputs come prompt by prompt, `per_prompt` each)."""
    folder = service.scratch()
    items = []
    for index, output in enumerate(job.get("outputs", [])):
        caption = f"seed {output.get('seed', '-')}"
        if prompts > 1:
            caption = f"prompt {index // per_prompt + 1} · {caption}"
        items.append((str(save_output(api, job, index, folder)), caption))
    return items


def run_job(
    service: Service, key: str, kind: str, fields: dict[str, Any], image: bytes | None = None
) -> Iterator[tuple[str, str, Any]]:
    """Submit a diffusion job and follow it: (job id, progress bars, gallery) as it runs, and
    the images at its end.

    Raises:
        ApiError: the service refused the request (`relay` turns it into a gr.Error naming
            the field).
        gr.Error: the job failed.
    """
    with service.client(key) as api:
        job = submitted = api.submit(kind, image, **fields)
        # An edit without prompts runs one empty prompt (the service's default).
        prompts = fields.get("prompts") or [""]
        per_prompt = fields.get("num_images_per_prompt", 1)
        labels = unit_labels(prompts, per_prompt)
        yield job["id"], unit_bars(job, labels), []  # the last run's images go
        for _, job in follow(api, submitted["id"]):
            yield job["id"], unit_bars(job, labels), gr.skip()
        if job["status"] == "failed":
            error = job.get("error") or {}
            raise gr.Error(f"job {job['id']} failed: {error.get('message') or error}")
        items = []
        if job["status"] == "succeeded":
            items = gallery_items(service, api, job, len(prompts), per_prompt)
        yield job["id"], unit_bars(job, labels), items


@dataclass
class DiffusionForm:
    """The form's components both diffusion tabs share, in `inputs` order."""

    model: gr.Dropdown
    checkpoints: gr.State  # checkpoint id -> its manifest (as listed)
    refresh: gr.Button
    prompts: gr.Textbox
    negative_prompt: gr.Textbox
    width: gr.Textbox
    height: gr.Textbox
    steps: gr.Textbox
    guidance: gr.Textbox
    seed: gr.Textbox
    sampler: gr.Dropdown
    images_per_prompt: gr.Number
    loras: gr.Dataframe

    @property
    def inputs(self) -> list[gr.components.Component]:
        """The components `diffusion_fields` takes, in its order."""
        return [
            self.model,
            self.prompts,
            self.negative_prompt,
            self.width,
            self.height,
            self.steps,
            self.guidance,
            self.seed,
            self.sampler,
            self.images_per_prompt,
            self.loras,
        ]


def family_placeholders(
    manifest: ModelManifest, guidance: Any = None
) -> tuple[str, str | None, str]:
    """The placeholders of Steps, Guidance and Negative prompt for a checkpoint: its defaults
    (Guidance: None where the service takes none), or what the service says of a negative
    prompt where it takes none (at `guidance`)."""
    defaults = defaults_for(manifest)
    family = manifest.family
    no_guidance, no_negative = guidance_notes(manifest, guidance)
    return (
        f"{defaults['steps']} ({family})",
        None if no_guidance else f"{defaults['guidance']} ({family})",
        no_negative or "optional",
    )


def model_row(label: str = "Model") -> tuple[gr.Dropdown, gr.State, gr.Button]:
    """The checkpoint picker and its Refresh button."""
    with gr.Row():
        # Custom values allowed: the choices arrive per session on load, and a caller of the
        # Gradio API (no load) names the model itself; the service refuses an unknown one.
        model = gr.Dropdown([], value=None, label=label, scale=4, allow_custom_value=True)
        refresh = gr.Button("Refresh models", scale=0, min_width=140, size="sm")
    return model, gr.State({}), refresh


def diffusion_form(
    *,
    size_hint: str,
    prompts_info: str,
    picker: tuple[gr.Dropdown, gr.State, gr.Button] | None = None,
) -> DiffusionForm:
    """The shared form (inside the caller's layout): `size_hint` says what an empty width or
    height means, `prompts_info` what several prompts do; `picker`, a `model_row` the caller
    placed itself (default: one at the form's top)."""
    model, checkpoints, refresh = picker or model_row()
    prompts = gr.Textbox(label="Prompts", info=prompts_info, lines=3, max_lines=12)
    negative = gr.Textbox(label="Negative prompt", lines=1, max_lines=4, placeholder="optional")
    # Textboxes, not gr.Number: an empty one means "the default", and Gradio's Number shows
    # and sends 0 until it is cleared.
    with gr.Row():
        width = gr.Textbox(label="Width", placeholder=size_hint)
        height = gr.Textbox(label="Height", placeholder=size_hint)
        per_prompt = gr.Number(
            label="Images per prompt", value=1, precision=0, minimum=1, maximum=16
        )
    with gr.Row():
        steps = gr.Textbox(label="Steps", placeholder="family default")
        guidance = gr.Textbox(label="Guidance", placeholder="family default")
        seed = gr.Textbox(label="Seed", placeholder="random")
        sampler = gr.Dropdown(
            [(DEFAULT, DEFAULT), *((s, s) for s in ALL_SAMPLERS)],
            value=DEFAULT,
            label="Sampler",
            allow_custom_value=True,  # Flux.1's samplers through the API; the service checks
        )
    loras = lora_table("LoRAs of the model's family (weight 0 or empty: not used; at most 4)")
    return DiffusionForm(
        model, checkpoints, refresh, prompts, negative, width, height, steps, guidance, seed,
        sampler, per_prompt, loras,
    )  # fmt: skip


def wire_models(
    service: Service,
    key: gr.Textbox,
    form: DiffusionForm,
    *,
    size_hint: str | None = None,
    offered: Callable[[str], bool] | None = None,
    guidance_shown: Callable[[ModelManifest], bool] = lambda manifest: True,
    extra_outputs: list[gr.components.Component] | None = None,
    extra: Callable[[Client, ModelManifest], list[Any]] | None = None,
) -> None:
    """Fill the checkpoint picker on page load, on Refresh and when a key is entered (with the
    checkpoints whose family is `offered`, default all); a picked checkpoint sets the family's
    samplers, defaults and what the service says of guidance and a negative prompt (as
    placeholders), and LoRAs. `size_hint` is what an empty width or height means (default:
    the family's size); `guidance_shown(manifest)` whether Guidance shows (Edit hides it for
    Qwen, whose true CFG scale takes its place); `extra(api, manifest)` returns updates for
    `extra_outputs`."""
    extra_outputs = extra_outputs or []

    @relay
    def load_models(key: str, current: str | None) -> tuple[Any, dict[str, Any]]:
        with service.client(key) as api:
            models = api.models(kind="checkpoint")
        if offered is not None:
            models = [m for m in models if offered(m.get("family") or "")]
        checkpoints = {m["id"]: m for m in models}
        choices = checkpoint_choices(models)
        value = current if current in checkpoints else (choices[0][1] if choices else None)
        return gr.Dropdown(choices=choices, value=value), checkpoints

    @relay
    def pick(key: str, model: str | None, checkpoints: dict[str, Any], guidance: str) -> list[Any]:
        manifest = manifest_of(checkpoints, model)
        if manifest is None:
            return [gr.skip()] * (7 + len(extra_outputs))
        family = str(manifest.family)
        with service.client(key) as api:
            loras = api.models(kind="lora", family=LORA_GROUP.get(family, family))
            updates = list(extra(api, manifest)) if extra else []
        samplers = list(samplers_for(family))  # type: ignore[arg-type]
        default = DEFAULT_SAMPLER[family]  # type: ignore[index]
        steps, guidance_hint, negative_hint = family_placeholders(manifest, typed(guidance))
        size = size_hint or f"{defaults_for(manifest)['size']} ({family})"
        shown = guidance_shown(manifest)
        return [
            gr.Dropdown(
                choices=[(f"{DEFAULT} ({default})", DEFAULT), *((s, s) for s in samplers)],
                value=DEFAULT,
            ),
            gr.Textbox(placeholder=steps),
            # A checkpoint the service refuses any guidance for (distilled FLUX.2 klein, as
            # `fill_guidance` says): the box is emptied and disabled.
            gr.Textbox(value="", placeholder="none (no CFG)", interactive=False, visible=shown)
            if guidance_hint is None
            else gr.Textbox(placeholder=guidance_hint, interactive=True, visible=shown),
            gr.Dataframe(value=[[lora["id"], 0] for lora in loras]),
            gr.Textbox(placeholder=negative_hint),
            gr.Textbox(placeholder=size),
            gr.Textbox(placeholder=size),
            *updates,
        ]

    def retyped(model: str | None, checkpoints: dict[str, Any], guidance: str) -> Any:
        """The negative prompt's placeholder at the guidance typed (Z-Image and Qwen take one
        only above a guidance)."""
        manifest = manifest_of(checkpoints, model)
        if manifest is None:
            return gr.skip()
        return gr.Textbox(placeholder=family_placeholders(manifest, typed(guidance))[2])

    family_outputs = [
        form.sampler,
        form.steps,
        form.guidance,
        form.loras,
        form.negative_prompt,
        form.width,
        form.height,
        *extra_outputs,
    ]
    private: dict[str, Any] = {"api_visibility": "private", "show_progress": "hidden"}
    picked = [key, form.model, form.checkpoints, form.guidance]
    blocks = get_blocks_context().root_block
    # On load and on demand (not on each keystroke in the key box: a half-typed key would
    # show an error per character); the family's lists follow, as a new LoRA may have come.
    gr.on(
        [blocks.load, form.refresh.click, key.submit],
        load_models,
        [key, form.model],
        [form.model, form.checkpoints],
        **private,
    ).then(pick, picked, family_outputs, **private)
    # `input`, not `change`: the user's pick (a refresh that keeps the model is handled above).
    form.model.input(pick, picked, family_outputs, **private)
    form.guidance.change(
        retyped, [form.model, form.checkpoints, form.guidance], form.negative_prompt, **private
    )


def results() -> tuple[gr.Textbox, gr.HTML, gr.Gallery]:
    """The run's outputs: its job id, a progress bar per prompt, the images."""
    job_id = gr.Textbox(label="Job", interactive=False, placeholder="no job yet")
    bars = gr.HTML(label="Progress", value="")
    # Thumbnails a third of the column wide, even for one image (a 64 px test image
    # stretched to the whole column looks like a fault).
    gallery = gr.Gallery(
        label="Images",
        columns=3,
        fit_columns=False,
        object_fit="contain",  # whole images, not square crops
        height="auto",
        interactive=False,
    )
    return job_id, bars, gallery


REFERENCE_HEADERS = ["reference", "weight"]


@dataclass
class ReferenceForm:
    """FLUX.2's reference images, shared by all prompts, and a weight for each."""

    box: gr.Accordion
    images: gr.Gallery
    weights: gr.Dataframe

    @property
    def inputs(self) -> list[gr.components.Component]:
        return [self.images, self.weights]


def reference_label(n: int, path: str) -> str:
    return f"{n + 1}. {Path(path).name}"


def reference_rows(items: Any, rows: Any) -> list[list[Any]]:
    """The weights table for the gallery's images: a row each, in order, with the weight an
    image already had (a removed image's row goes, the others keep theirs) or 1."""
    if hasattr(rows, "values"):
        rows = rows.values.tolist()
    kept = {str(row[0]).split(". ", 1)[-1]: row[1] for row in rows or [] if row and len(row) > 1}
    weights = []
    for n, path in enumerate(gallery_paths(items)):
        weight = kept.get(Path(path).name)
        weights.append([reference_label(n, path), 1 if weight in (None, "") else weight])
    return weights


def references_field(items: Any, rows: Any) -> list[dict[str, Any]]:
    """The request's ``references``: each image base64 with its row's weight as typed (the
    service refuses one out of range, naming ``references.N.weight``); no row or an empty
    weight is the service's default, 1."""
    if hasattr(rows, "values"):
        rows = rows.values.tolist()
    rows = list(rows or [])
    references = []
    for n, path in enumerate(gallery_paths(items)):
        reference: dict[str, Any] = {"image": b64_file(path)}
        weight = typed(rows[n][1]) if n < len(rows) and len(rows[n]) > 1 else None
        if weight is not None:
            reference["weight"] = weight
        references.append(reference)
    return references


def reference_form() -> ReferenceForm:
    """The reference images section (inside the caller's layout), hidden until a FLUX.2
    checkpoint is picked."""
    with gr.Accordion("Reference images (FLUX.2)", open=True, visible=False) as box:
        images = gr.Gallery(
            label=f"Reference images (up to {MAX_REFERENCES}, shared by all prompts)",
            type="filepath",
            interactive=True,
            file_types=["image"],
            columns=4,
            fit_columns=False,  # thumbnails, not two images a half column wide each
            height=240,
            object_fit="contain",
            elem_id="ab-references",
        )
        weights = gr.Dataframe(
            headers=REFERENCE_HEADERS,
            datatype=["str", "number"],
            value=[],
            type="array",
            static_columns=[0],
            label=f"Weights (0 to {MAX_REFERENCE_WEIGHT:g}: 1 as FLUX.2 itself, 0 as if left out)",
            elem_id="ab-reference-weights",
        )
    images.change(
        reference_rows,
        [images, weights],
        weights,
        api_visibility="private",
        show_progress="hidden",
    )
    return ReferenceForm(box, images, weights)


def generate_extras(api: Client, manifest: ModelManifest) -> list[Any]:
    """The Generate tab's sections for a checkpoint: FLUX.2's references (hidden and emptied
    for other families: a hidden section sends nothing), the IP-Adapter (SD 1.5, SDXL)."""
    family = str(manifest.family)
    flux2 = family in FLUX2_FAMILIES
    references = [gr.Accordion(visible=flux2), gr.skip() if flux2 else None]
    return [*references, *ip_adapter_updates(api, family, family not in FLOW_FAMILIES)]


def render(service: Service, key: gr.Textbox) -> None:
    """The Generate tab."""
    with gr.Row(elem_id="ab-generate"):
        with gr.Column(scale=3):
            form = diffusion_form(
                size_hint="family default",
                prompts_info="one per line; each is a unit of the job with its own images",
            )
            references = reference_form()
            ip: IPAdapterForm = ip_adapter_form("Image prompt (needed with an IP-Adapter)")
            button = gr.Button("Generate", variant="primary")
        with gr.Column(scale=2):
            job_id, bars, gallery = results()
    wire_models(
        service,
        key,
        form,
        offered=lambda family: family not in INSTRUCTION_EDIT_IMAGES,  # edit only: Edit tab
        extra_outputs=[references.box, references.images, ip.box, ip.model],
        extra=generate_extras,
    )

    @relay
    def generate(
        key: str,
        model: str | None,
        prompts: str,
        negative_prompt: str,
        width: str,
        height: str,
        steps: str,
        guidance: str,
        seed: str,
        sampler: str,
        images_per_prompt: float | None,
        loras: Any,
        reference_images: Any,
        reference_weights: Any,
        ip_adapter: str | None,
        ip_image: str | None,
        ip_scale: float | None,
    ) -> Iterator[tuple[str, str, Any]]:
        fields = diffusion_fields(
            model, prompts, negative_prompt, width, height, steps, guidance, seed, sampler,
            images_per_prompt, loras,
        )  # fmt: skip
        refs = references_field(reference_images, reference_weights)
        if refs:
            fields["references"] = refs
        adapter = ip_adapter_field(ip_adapter, ip_image, ip_scale)
        if adapter is not None:
            fields["ip_adapter"] = adapter
        yield from run_job(service, key, "generate", fields)

    button.click(
        generate,
        [key, *form.inputs, *references.inputs, *ip.inputs],
        [job_id, bars, gallery],
        api_name="generate",
        show_progress="hidden",
    )
