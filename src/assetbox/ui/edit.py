"""The Edit tab: img2img (``POST /v1/edit``) of an uploaded image with a checkpoint, `strength`
saying how much is redrawn, optionally guided by a ControlNet of the checkpoint's family (its
control image: the input unless another is uploaded); the rest of the form, the progress bars
and the gallery are the Generate tab's.

Instruction edits (Qwen-Image-Edit) arrive with issue 14; until then there is no UI for them.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from assetbox.client import Client
from assetbox.ui.common import Service, relay
from assetbox.ui.generate import diffusion_fields, diffusion_form, results, run_job, wire_models

NO_CONTROLNET = "none"


def edit_fields(
    form_fields: dict[str, Any],
    strength: float | None,
    controlnet: str | None,
    conditioning_scale: float | None,
    control_image: str | None,
) -> dict[str, Any]:
    """`form_fields` (the shared form's, from `diffusion_fields`) with the edit's own: strength
    and the ControlNet (its image base64, when one is uploaded; else the service uses the
    input). No prompt is an empty one (the service's default for an edit)."""
    fields = dict(form_fields)
    if not fields.get("prompts"):
        del fields["prompts"]
    if strength is not None:
        fields["strength"] = float(strength)
    if controlnet and controlnet != NO_CONTROLNET:
        net: dict[str, Any] = {"model": controlnet}
        if conditioning_scale is not None:
            net["conditioning_scale"] = float(conditioning_scale)
        if control_image:
            net["image"] = base64.b64encode(Path(control_image).read_bytes()).decode()
        fields["controlnet"] = net
    return fields


def controlnet_choices(api: Client, family: str) -> list[Any]:
    """The ControlNet picker's update for a checkpoint of `family`: its family's ControlNets."""
    nets = api.models(kind="controlnet", family=family)
    return [gr.Dropdown(choices=[NO_CONTROLNET, *(n["id"] for n in nets)], value=NO_CONTROLNET)]


def render(service: Service, key: gr.Textbox) -> None:
    """The Edit tab."""
    with gr.Row(elem_id="ab-edit"):
        with gr.Column(scale=3):
            image = gr.Image(type="filepath", label="Input image", sources=["upload", "clipboard"])
            form = diffusion_form(
                size_hint="input's size",
                prompts_info="one per line, or none; each is a unit of the job with its own images",
            )
            strength = gr.Slider(
                0.01, 1, value=0.6, step=0.01, label="Strength", info="1 redraws all of it"
            )
            with gr.Accordion("ControlNet", open=False):
                with gr.Row():
                    # Custom values: the family's ControlNets arrive when a model is picked,
                    # which a caller of the Gradio API never does; the service checks the id.
                    controlnet = gr.Dropdown(
                        [NO_CONTROLNET],
                        value=NO_CONTROLNET,
                        label="ControlNet",
                        scale=2,
                        allow_custom_value=True,
                    )
                    scale = gr.Slider(0, 4, value=1.0, step=0.05, label="Conditioning scale")
                control_image = gr.Image(
                    type="filepath",
                    label="Control image (default: the input image)",
                    sources=["upload", "clipboard"],
                )
            button = gr.Button("Edit", variant="primary")
        with gr.Column(scale=2):
            job_id, bars, gallery = results()
    wire_models(
        service,
        key,
        form,
        size_hint="input's size",
        extra_outputs=[controlnet],
        extra=controlnet_choices,
    )

    @relay
    def edit(
        key: str,
        image: str | None,
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
        strength: float | None,
        controlnet: str | None,
        conditioning_scale: float | None,
        control_image: str | None,
    ) -> Iterator[tuple[str, str, Any]]:
        if not image:
            raise gr.Error("`image`: upload the image to edit")
        shared = diffusion_fields(
            model, prompts, negative_prompt, width, height, steps, guidance, seed, sampler,
            images_per_prompt, loras,
        )  # fmt: skip
        fields = edit_fields(shared, strength, controlnet, conditioning_scale, control_image)
        yield from run_job(service, key, "edit", fields, Path(image).read_bytes())

    button.click(
        edit,
        [key, image, *form.inputs, strength, controlnet, scale, control_image],
        [job_id, bars, gallery],
        api_name="edit",
        show_progress="hidden",
    )
