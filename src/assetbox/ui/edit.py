"""The Edit tab (``POST /v1/edit``), in the two forms the service has, the picked checkpoint's
family choosing which one shows:

- img2img (sd15, sdxl, flux1): an uploaded image, `strength` saying how much is redrawn,
  optionally a ControlNet of the checkpoint's family (its control image: the input unless
  another is uploaded) and, for SD 1.5 and SDXL, an IP-Adapter (its image: the input unless
  another is uploaded);
- instruction edit (qwen_image_edit: 1 image, qwen_image_edit_plus: 1 to 3, flux2_klein and
  flux2: 1 to 16): an instruction and the input images, and for Qwen its true CFG scale and
  the area the pipeline resizes each input to.

Only checkpoints of a family with an edit are offered. The rest of the form, the progress bars
and the gallery are the Generate tab's. A hidden form's inputs are not sent.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from assetbox.client import Client
from assetbox.kinds.diffusion import defaults_for
from assetbox.models.store import ModelManifest
from assetbox.pipelines.diffusion import (
    DEFAULT_CONDITION_PIXELS,
    FLOW_FAMILIES,
    IMG2IMG_FAMILIES,
    INSTRUCTION_EDIT_IMAGES,
    QWEN_FAMILIES,
)
from assetbox.pipelines.flux2 import FLUX2_FAMILIES, MAX_REFERENCES
from assetbox.ui.common import (
    Service,
    b64_file,
    gallery_paths,
    ip_adapter_field,
    ip_adapter_form,
    ip_adapter_updates,
    relay,
    typed,
)
from assetbox.ui.generate import (
    diffusion_fields,
    diffusion_form,
    family_placeholders,
    manifest_of,
    model_row,
    results,
    run_job,
    wire_models,
)

NO_CONTROLNET = "none"


def instruction_limit(family: str) -> int | None:
    """How many input images `family` edits by instruction; None: it edits by img2img."""
    if family in INSTRUCTION_EDIT_IMAGES:
        return INSTRUCTION_EDIT_IMAGES[family]  # type: ignore[index]
    return MAX_REFERENCES if family in FLUX2_FAMILIES else None


def has_edit(family: str) -> bool:
    """Whether `family` has an edit at all (Qwen-Image and Z-Image generate only)."""
    return family in IMG2IMG_FAMILIES or instruction_limit(family) is not None


def edit_fields(
    form_fields: dict[str, Any],
    strength: float | None,
    controlnet: str | None,
    conditioning_scale: float | None,
    control_image: str | None,
) -> dict[str, Any]:
    """`form_fields` (the shared form's, from `diffusion_fields`) with img2img's own: strength
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
            net["image"] = b64_file(control_image)
        fields["controlnet"] = net
    return fields


def instruction_fields(
    form_fields: dict[str, Any],
    instruction: str | None,
    images: list[str],
    true_cfg_scale: str | None,
    condition_pixels: str | None,
) -> dict[str, Any]:
    """`form_fields` with the instruction form's own: the instruction (it is the prompt: the
    form's prompts are not sent), the images base64, and, as typed, Qwen's true CFG scale and
    conditioning area (the service refuses them for another family, naming the field)."""
    fields = {name: value for name, value in form_fields.items() if name != "prompts"}
    fields["instruction"] = (instruction or "").strip()
    fields["images"] = [b64_file(path) for path in images]
    for name, text in (("true_cfg_scale", true_cfg_scale), ("condition_pixels", condition_pixels)):
        value = typed(text)
        if value is not None:
            fields[name] = value
    return fields


def edit_sections(api: Client, manifest: ModelManifest) -> list[Any]:
    """The updates that show the form of the checkpoint's family (`render`'s `sections`)."""
    family = str(manifest.family)
    limit = instruction_limit(family)
    instruction = limit is not None
    qwen = family in QWEN_FAMILIES
    nets = [] if instruction else api.models(kind="controlnet", family=family)
    many = f"1 to {limit}" if limit != 1 else "1"
    return [
        gr.Column(visible=not instruction),  # the input image
        gr.Column(visible=instruction),  # instruction, images, true CFG, conditioning area
        gr.Column(visible=not instruction),  # strength, ControlNet
        gr.Textbox(visible=not instruction),  # prompts: the instruction is the prompt
        gr.Gallery(label=f"Input images ({many} for {family})"),
        gr.Textbox(visible=qwen, placeholder=f"{defaults_for(manifest)['guidance']} ({family})"),
        gr.Textbox(visible=qwen),
        gr.Dropdown(choices=[NO_CONTROLNET, *(n["id"] for n in nets)], value=NO_CONTROLNET),
        *ip_adapter_updates(api, family, not instruction and family not in FLOW_FAMILIES),
    ]


def render(service: Service, key: gr.Textbox) -> None:
    """The Edit tab."""
    with gr.Row(elem_id="ab-edit"):
        with gr.Column(scale=3):
            # The model first: its family says which form follows.
            picker = model_row()
            with gr.Column() as image_box:
                image = gr.Image(
                    type="filepath",
                    label="Input image",
                    sources=["upload", "clipboard"],
                    height=260,  # a small input shown whole at a size one can see
                )
            with gr.Column(visible=False, elem_id="ab-instruction") as instruction_box:
                instruction = gr.Textbox(
                    label="Instruction",
                    lines=2,
                    max_lines=8,
                    placeholder="what to change, e.g. 'put the cat from image 2 on the sofa'",
                )
                images = gr.Gallery(
                    label="Input images",
                    type="filepath",
                    interactive=True,
                    file_types=["image"],
                    columns=4,
                    fit_columns=False,
                    height=240,
                    object_fit="contain",
                    elem_id="ab-edit-images",
                )
                with gr.Row():
                    true_cfg = gr.Textbox(
                        label="True CFG scale",
                        info="acts above 1 with a negative prompt",
                        visible=False,
                    )
                    condition_pixels = gr.Textbox(
                        label="Conditioning area (pixels)",
                        info="each input resized to this area before the model sees it",
                        placeholder=f"{DEFAULT_CONDITION_PIXELS} (1 MP)",
                        visible=False,
                    )
            form = diffusion_form(
                size_hint="input's size",
                prompts_info="one per line, or none; each is a unit of the job with its own images",
                picker=picker,
            )
            with gr.Column() as img2img_box:
                strength = gr.Slider(
                    0.01, 1, value=0.6, step=0.01, label="Strength", info="1 redraws all of it"
                )
                with gr.Accordion("ControlNet", open=False):
                    with gr.Row():
                        # Custom values: the family's ControlNets arrive when a model is
                        # picked, which a caller of the Gradio API never does; the service
                        # checks the id.
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
                ip = ip_adapter_form("Image prompt (default: the input image)")
            button = gr.Button("Edit", variant="primary")
        with gr.Column(scale=2):
            job_id, bars, gallery = results()
    sections = [
        image_box,
        instruction_box,
        img2img_box,
        form.prompts,
        images,
        true_cfg,
        condition_pixels,
        controlnet,
        ip.box,
        ip.model,
    ]
    wire_models(
        service,
        key,
        form,
        size_hint="input's size",
        offered=has_edit,
        # Qwen's guidance is its true CFG scale, which the instruction form shows instead.
        guidance_shown=lambda manifest: manifest.family not in QWEN_FAMILIES,
        extra_outputs=sections,
        extra=edit_sections,
    )

    def retyped(model: str | None, checkpoints: dict[str, Any], cfg: str) -> Any:
        """The negative prompt's placeholder at the true CFG scale typed."""
        manifest = manifest_of(checkpoints, model)
        if manifest is None:
            return gr.skip()
        return gr.Textbox(placeholder=family_placeholders(manifest, typed(cfg))[2])

    true_cfg.change(
        retyped,
        [form.model, form.checkpoints, true_cfg],
        form.negative_prompt,
        api_visibility="private",
        show_progress="hidden",
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
        ip_adapter: str | None,
        ip_image: str | None,
        ip_scale: float | None,
        instruction: str | None,
        instruction_images: Any,
        true_cfg_scale: str | None,
        pixels: str | None,
        checkpoints: dict[str, Any],
    ) -> Iterator[tuple[str, str, Any]]:
        manifest = manifest_of(checkpoints or {}, model)
        paths = gallery_paths(instruction_images)
        # The picked family says the form; a caller of the Gradio API (no pick) says it by
        # filling the instruction form in.
        if manifest is not None:
            by_instruction = instruction_limit(str(manifest.family)) is not None
        else:
            by_instruction = bool((instruction or "").strip() or paths)
        qwen = manifest is None or manifest.family in QWEN_FAMILIES
        shared = diffusion_fields(
            model, prompts, negative_prompt, width, height, steps, guidance, seed, sampler,
            images_per_prompt, loras,
        )  # fmt: skip
        if by_instruction:
            if not paths:
                raise gr.Error("`images`: upload the image(s) to edit")
            if manifest is not None and qwen:
                shared.pop("guidance", None)  # hidden: Qwen's is the true CFG scale
            fields = instruction_fields(
                shared,
                instruction,
                paths,
                true_cfg_scale if qwen else None,
                pixels if qwen else None,
            )
            yield from run_job(service, key, "edit", fields)
            return
        if not image:
            raise gr.Error("`image`: upload the image to edit")
        fields = edit_fields(shared, strength, controlnet, conditioning_scale, control_image)
        adapter = ip_adapter_field(ip_adapter, ip_image, ip_scale)
        if adapter is not None:
            fields["ip_adapter"] = adapter
        yield from run_job(service, key, "edit", fields, Path(image).read_bytes())

    button.click(
        edit,
        [
            key,
            image,
            *form.inputs,
            strength,
            controlnet,
            scale,
            control_image,
            *ip.inputs,
            instruction,
            images,
            true_cfg,
            condition_pixels,
            form.checkpoints,
        ],
        [job_id, bars, gallery],
        api_name="edit",
        show_progress="hidden",
    )
