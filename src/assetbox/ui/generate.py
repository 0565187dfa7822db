"""The Generate tab (text to image, ``POST /v1/generate``), and the diffusion form and job
runner it shares with the Edit tab: checkpoint picker, prompts, size, steps, guidance, seed,
sampler, LoRAs; a progress bar per prompt while the job runs; the images with their seeds.

Reference images are left out: no family takes them yet (FLUX.2, issue 14, adds them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr
from gradio.context import get_blocks_context

from assetbox.client import Client
from assetbox.kinds.diffusion import DEFAULTS
from assetbox.pipelines.diffusion import DEFAULT_SAMPLER, samplers_for
from assetbox.ui.common import (
    Service,
    follow,
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
    """Dropdown choices for checkpoints, grouped by family: ``("tiny-sd15 · sd15", id)``."""
    ordered = sorted(models, key=lambda m: (m.get("family") or "", m["id"]))
    return [(f"{m['id']} · {m.get('family') or '?'}", m["id"]) for m in ordered]


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
    families: gr.State
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


def negative_hint(family: str) -> str:
    """The negative prompt's placeholder: Flux.1 refuses one (guidance-distilled)."""
    return "Flux.1 takes no negative prompt" if family == "flux1" else "optional"


def model_row(label: str = "Model") -> tuple[gr.Dropdown, gr.State, gr.Button]:
    """The checkpoint picker and its Refresh button."""
    with gr.Row():
        # Custom values allowed: the choices arrive per session on load, and a caller of the
        # Gradio API (no load) names the model itself; the service refuses an unknown one.
        model = gr.Dropdown([], value=None, label=label, scale=4, allow_custom_value=True)
        refresh = gr.Button("Refresh models", scale=0, min_width=140, size="sm")
    return model, gr.State({}), refresh


def diffusion_form(*, size_hint: str, prompts_info: str) -> DiffusionForm:
    """The shared form (inside the caller's layout): `size_hint` says what an empty width or
    height means, `prompts_info` what several prompts do."""
    model, families, refresh = model_row()
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
        model, families, refresh, prompts, negative, width, height, steps, guidance, seed,
        sampler, per_prompt, loras,
    )  # fmt: skip


def wire_models(
    service: Service,
    key: gr.Textbox,
    form: DiffusionForm,
    *,
    size_hint: str | None = None,
    extra_outputs: list[gr.components.Component] | None = None,
    extra: Callable[[Client, str], list[Any]] | None = None,
) -> None:
    """Fill the checkpoint picker on page load, on Refresh and when a key is entered; a picked
    checkpoint sets the family's samplers, defaults (as placeholders) and LoRAs. `size_hint`
    is what an empty width or height means (default: the family's size);
    `extra(api, family)` returns updates for `extra_outputs` (Edit's ControlNets)."""
    extra_outputs = extra_outputs or []

    @relay
    def load_models(key: str, current: str | None) -> tuple[Any, dict[str, str]]:
        with service.client(key) as api:
            models = api.models(kind="checkpoint")
        families = {m["id"]: m.get("family") or "" for m in models}
        choices = checkpoint_choices(models)
        value = current if current in families else (choices[0][1] if choices else None)
        return gr.Dropdown(choices=choices, value=value), families

    @relay
    def pick(key: str, model: str | None, families: dict[str, str]) -> list[Any]:
        family = families.get(model or "")
        if family not in DEFAULTS:
            return [gr.skip()] * (7 + len(extra_outputs))
        defaults = DEFAULTS[family]
        with service.client(key) as api:
            loras = api.models(kind="lora", family=family)
            updates = list(extra(api, family)) if extra else []
        samplers = list(samplers_for(family))  # type: ignore[arg-type]
        default = DEFAULT_SAMPLER[family]  # type: ignore[index]
        return [
            gr.Dropdown(
                choices=[(f"{DEFAULT} ({default})", DEFAULT), *((s, s) for s in samplers)],
                value=DEFAULT,
            ),
            gr.Textbox(placeholder=f"{defaults['steps']} ({family})"),
            gr.Textbox(placeholder=f"{defaults['guidance']} ({family})"),
            gr.Dataframe(value=[[lora["id"], 0] for lora in loras]),
            gr.Textbox(placeholder=negative_hint(family)),
            gr.Textbox(placeholder=size_hint or f"{defaults['size']} ({family})"),
            gr.Textbox(placeholder=size_hint or f"{defaults['size']} ({family})"),
            *updates,
        ]

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
    blocks = get_blocks_context().root_block
    # On load and on demand (not on each keystroke in the key box: a half-typed key would
    # show an error per character); the family's lists follow, as a new LoRA may have come.
    gr.on(
        [blocks.load, form.refresh.click, key.submit],
        load_models,
        [key, form.model],
        [form.model, form.families],
        **private,
    ).then(pick, [key, form.model, form.families], family_outputs, **private)
    # `input`, not `change`: the user's pick (a refresh that keeps the model is handled above).
    form.model.input(pick, [key, form.model, form.families], family_outputs, **private)


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


def render(service: Service, key: gr.Textbox) -> None:
    """The Generate tab."""
    with gr.Row(elem_id="ab-generate"):
        with gr.Column(scale=3):
            form = diffusion_form(
                size_hint="family default",
                prompts_info="one per line; each is a unit of the job with its own images",
            )
            button = gr.Button("Generate", variant="primary")
        with gr.Column(scale=2):
            job_id, bars, gallery = results()
    wire_models(service, key, form)

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
    ) -> Iterator[tuple[str, str, Any]]:
        fields = diffusion_fields(
            model, prompts, negative_prompt, width, height, steps, guidance, seed, sampler,
            images_per_prompt, loras,
        )  # fmt: skip
        yield from run_job(service, key, "generate", fields)

    button.click(
        generate,
        [key, *form.inputs],
        [job_id, bars, gallery],
        api_name="generate",
        show_progress="hidden",
    )
