"""Captions of images and tiles with a vision-language model (Qwen2.5-VL, Qwen3-VL; transformers).

A loaded captioner (`Captioner`) is the model and an image-only processor. The processor is the
model's own processor class (``Qwen2_5_VLProcessor``, ``Qwen3VLProcessor``) built without its video
part: transformers' video processors need torchvision, which CPU machines here lack, and
``AutoProcessor`` refuses to build the processor without one. The image part is always the PIL
image processor (``Qwen2VLImageProcessorPil``), also where torchvision is installed, so a tile gets
the same pixels, and the same caption, on every machine.

The model cache holds captioners as it holds diffusion checkpoints::

    folder = store.path(manifest.id, "captioner") / TRANSFORMERS_DIR
    with ctx.models.lease(
        f"captioner:{manifest.id}:{manifest.sha256[:12]}",
        lambda: load_captioner(folder),
        estimate=estimate_captioner_bytes(folder),
        exclusive=True,  # one caption call at a time anyway (see Captioner)
    ) as captioner:
        captions = caption(captioner, tiles, report_token=..., should_stop=ctx.should_stop)

`caption` runs a batch of images in one forward pass per token (left padding; rows that end
early wait for the others). A caption is a function of its image and the request alone: the same
image gets the same caption alone or in any batch, greedy by default; with `temperature`, image k
samples with its own generator seeded ``seed + k``.

No file or network I/O here beyond loading the model from the folder given.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from assetbox.errors import Cancelled, InvalidInput, ModelError, OutOfMemory
from assetbox.models.store import CAPTIONER_FAMILIES

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEFAULT_SYSTEM_PROMPT = (
    "You write prompts for an image diffusion model. Describe the image (often a crop of a "
    "larger picture) as one line of short, comma-separated phrases: the main subject first, then "
    "materials and textures, colours, lighting, and style or medium. Name only what is visible. "
    "No sentences, no introduction such as 'The image shows', no guesses about what lies outside "
    "the crop. At most 40 words."
)
DEFAULT_PROMPT = "Describe this image."
DEFAULT_MAX_TOKENS = 77
MAX_TOKENS = 1024
# Visual tokens per image: one per 28x28 pixels for Qwen2.5-VL (patch 14, 2x2 merge), one per
# 32x32 for Qwen3-VL (patch 16). This cap (~256 tokens on Qwen2.5-VL) scales a 1024x1024 tile
# down to 448x448; the models' own caps (up to 16384 tokens) would make a tile cost 1300.
DEFAULT_MAX_PIXELS = 256 * 28 * 28
MAX_ASPECT_RATIO = 200  # the Qwen image processors refuse longer sides


@dataclass(frozen=True)
class Caption:
    """One image's caption: `text` cleaned for a diffusion prompt, `raw` as the model wrote it,
    `tokens` generated (its end-of-turn token included), `truncated` when `max_tokens` cut it."""

    text: str
    raw: str
    tokens: int
    truncated: bool


@dataclass
class Captioner:
    """A loaded vision-language model and its image-only processor.

    `caption` runs one call at a time per captioner (`lock`): generate() keeps per-call state
    on the model (Qwen's ``rope_deltas``, its batch's position offsets). transformers 5.23 reads
    it back only at the start of the call that set it, so threads sharing a model do not mix
    positions today (tests/pipelines/test_caption.py), but nothing promises that; on one device
    calls gain little from overlapping anyway.
    """

    family: str
    model: Any
    processor: Any
    device: str
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def nbytes(self) -> int:
        """Parameters and buffers of the model (what the model cache counts)."""
        from assetbox.models.cache import estimate_bytes

        return estimate_bytes(self.model)


def device_and_dtype() -> tuple[str, Any]:
    """bf16 on CUDA (fp16 where the GPU has no bf16); float32 on a CPU."""
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return "cpu", torch.float32


def estimate_captioner_bytes(folder: Path) -> int:
    """Memory the captioner in `folder` will take once loaded, from its weights' headers: every
    tensor in the dtype `load_captioner` loads it in (float32 on a CPU: twice a bf16 file).

    Raises:
        ModelError: a weights file is unreadable.
    """
    import torch
    from safetensors import safe_open

    _, dtype = device_and_dtype()
    size = torch.tensor([], dtype=dtype).element_size()
    elements = 0
    for path in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 (safe_open is no dict)
                    elements += int(np.prod(handle.get_slice(key).get_shape(), dtype=np.int64))
        except Exception as exc:  # safetensors raises untyped errors for bad headers
            raise ModelError(f"cannot read {path.name}: {exc}") from exc
    return elements * size


def _image_only(processor_class: type) -> type:
    """`processor_class` without its video processor (it needs torchvision): ProcessorMixin
    takes its parts from the __init__ signature, so a subclass whose __init__ names no video
    processor is built from the image processor and the tokenizer alone, and processes images
    and text with the class's own code."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        processor_class.__init__(
            self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs
        )

    return type(processor_class.__name__, (processor_class,), {"__init__": __init__})


def image_only_processor(family: str, image_processor: Any, tokenizer: Any, chat_template: str):
    """The family's processor (Qwen2_5_VLProcessor, Qwen3VLProcessor) without a video part."""
    import transformers

    name = {"qwen2_5_vl": "Qwen2_5_VLProcessor", "qwen3_vl": "Qwen3VLProcessor"}[family]
    cls = _image_only(getattr(transformers, name))
    return cls(image_processor, tokenizer, chat_template=chat_template)


def _chat_template(folder: Path, tokenizer: Any) -> str:
    """The folder's chat template: chat_template.jinja, chat_template.json, or the tokenizer's."""
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    if (folder / "chat_template.json").is_file():
        template = json.loads((folder / "chat_template.json").read_text()).get("chat_template")
        if isinstance(template, str):
            return template
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template:
        return template
    raise ModelError(f"{folder.name} has no chat template")


def load_captioner(folder: Path) -> Captioner:
    """Load a captioner's transformers folder offline (float32 on a CPU, bf16 on CUDA).

    Raises:
        ModelError: not a supported captioner, or the files do not load.
    """
    import torch
    from transformers import AutoModelForImageTextToText, AutoTokenizer, Qwen2VLImageProcessorPil

    folder = Path(folder)
    device, dtype = device_and_dtype()
    try:
        family = json.loads((folder / "config.json").read_text()).get("model_type")
        if family not in CAPTIONER_FAMILIES:
            raise ModelError(
                f"{folder.name} holds a {family!r} model; captioners: {CAPTIONER_FAMILIES}"
            )
        tokenizer = AutoTokenizer.from_pretrained(
            str(folder), local_files_only=True, padding_side="left"
        )
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(
            str(folder), local_files_only=True
        )
        processor = image_only_processor(
            family, image_processor, tokenizer, _chat_template(folder, tokenizer)
        )
        model = AutoModelForImageTextToText.from_pretrained(
            str(folder), dtype=dtype, local_files_only=True
        )
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise ModelError(f"cannot load the captioner in {folder.name}: {exc}") from exc
    try:
        model.to(device).eval()
    except torch.OutOfMemoryError as exc:
        raise OutOfMemory(f"the device ran out of memory loading the captioner: {exc}") from exc
    return Captioner(family=family, model=model, processor=processor, device=device)


# -- cleaning ------------------------------------------------------------------------------------

_THINKING = re.compile(r"<think>.*?(</think>|$)", re.S | re.I)
_NOUN = r"(?:image|picture|photo(?:graph)?|crop|tile|region|scene|artwork|illustration)"
_VERB = (
    r"(?:shows|depicts|features|displays|contains|captures|presents|portrays|illustrates|"
    r"is of|appears to (?:show|be)|is)"
)
# Introductions a diffusion prompt does without, repeated as long as one starts the text.
_LEADING = re.compile(
    r"^(?:"
    rf"(?:the|this|the given|this given) {_NOUN} {_VERB}\b"
    rf"|(?:this|it) is (?:an? |the )?(?:close-up |cropped )?{_NOUN} (?:of|showing)\b"
    rf"|(?:in|within) (?:the|this) {_NOUN}\b"
    r"|an? (?:image|picture) (?:of|showing)\b"  # "A photo of ..." names a style: kept
    r"|here (?:is|we see)\b|(?:it|this) shows\b|we (?:can )?see\b|there (?:is|are)\b"
    r"|(?:caption|description|prompt)\s*:"
    r")[\s,:;-]*",
    re.I,
)
_MARKDOWN = re.compile(r"\*\*|__|`|^#+\s*|^\s*(?:[-*•]|\d+[.)])\s+", re.M)
# Double quotes anywhere; single quotes (straight or curly) unless between letters (apostrophes).
_QUOTES = re.compile(
    "[\"\u201c\u201d\u201e\u00ab\u00bb]|(?<![A-Za-z])['\u2018\u2019]|['\u2018\u2019](?![A-Za-z])"
)
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def clean_caption(raw: str, truncated: bool) -> str:
    """`raw` model output as one line fit for a diffusion prompt.

    Drops reasoning (``<think>`` blocks), markdown (bold, headings, bullets, code marks) and
    quotes; joins lines (with ", " where a line ends without punctuation); strips introductions
    ("The image shows", "This is an image of", "In this image," ...). When generation hit its
    token limit (`truncated`), the unfinished end is cut back to the last sentence end, else to
    the last comma, when there is one.
    """
    text = _THINKING.sub("", raw)
    text = _MARKDOWN.sub("", text)
    text = _QUOTES.sub("", text)
    pieces = [line.strip() for line in text.splitlines() if line.strip()]
    text = ""
    for piece in pieces:
        joint = "" if not text else " " if text[-1] in ".,;:!?" else ", "
        text += joint + piece
    text = re.sub(r"\s+", " ", text).strip()
    text = text.lstrip(" ,.;:-")
    while match := _LEADING.match(text):
        if not match.end():
            break
        text = text[match.end() :]
    if truncated:
        ends = [m.end() for m in _SENTENCE_END.finditer(text)]
        if ends:
            text = text[: ends[-1]]
        elif "," in text:
            text = text[: text.rindex(",")]
    text = re.sub(r"\s+([,.;:!?])", r"\1", text)
    return text.strip().rstrip(",;:- ").strip()


# -- captioning ----------------------------------------------------------------------------------


def _check_inputs(
    captioner: Captioner,
    images: Sequence[np.ndarray],
    max_tokens: int,
    temperature: float | None,
    max_pixels: int,
) -> None:
    if len(images) == 0:
        raise InvalidInput("`images` must hold at least one image but is empty", field="images")
    for index, image in enumerate(images):
        array = np.asarray(image)
        if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
            raise InvalidInput(
                f"`images[{index}]` must be an H x W x 3 uint8 array but is {array.dtype} "
                f"{array.shape}",
                field="images",
            )
        height, width = array.shape[:2]
        if min(height, width) < 1 or max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
            raise InvalidInput(
                f"`images[{index}]` is {width}x{height}; the longer side may be at most "
                f"{MAX_ASPECT_RATIO} times the shorter",
                field="images",
            )
    if not 1 <= max_tokens <= MAX_TOKENS:
        raise InvalidInput(
            f"`max_tokens` must be between 1 and {MAX_TOKENS} but is {max_tokens}",
            field="max_tokens",
        )
    if temperature is not None and not 0 <= temperature <= 10:
        raise InvalidInput(
            f"`temperature` must be between 0 and 10 but is {temperature}", field="temperature"
        )
    image_processor = captioner.processor.image_processor
    factor = image_processor.patch_size * image_processor.merge_size
    if max_pixels < factor * factor:
        raise InvalidInput(
            f"`max_pixels` must be at least {factor * factor} (one {factor}x{factor} visual "
            f"token) but is {max_pixels}",
            field="max_pixels",
        )


def _messages(system_prompt: str, prompt: str) -> list[dict[str, Any]]:
    conversation: list[dict[str, Any]] = []
    if system_prompt:
        conversation.append(
            {"role": "system", "content": [{"type": "text", "text": system_prompt}]}
        )
    conversation.append(
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}
    )
    return conversation


def prepare_inputs(
    captioner: Captioner,
    images: Sequence[np.ndarray],
    *,
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
    prompt: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Any:
    """The model inputs for `images` (a BatchFeature: input_ids and attention_mask left padded,
    pixel_values, image_grid_thw, mm_token_type_ids), on the CPU."""
    from PIL import Image

    processor = captioner.processor
    conversation = _messages(system_prompt, prompt or DEFAULT_PROMPT)
    texts = processor.apply_chat_template(
        [conversation] * len(images),
        tokenize=False,
        add_generation_prompt=True,
    )
    min_pixels = min(processor.image_processor.size.shortest_edge, max_pixels)
    return processor(
        text=texts,
        images=[Image.fromarray(np.ascontiguousarray(image)) for image in images],
        size={"longest_edge": max_pixels, "shortest_edge": min_pixels},
        padding=True,
        return_tensors="pt",
    )


def caption(
    captioner: Captioner,
    images: Sequence[np.ndarray],
    *,
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
    prompt: str | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    temperature: float | None = None,
    seed: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    report_token: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[Caption]:
    """Caption `images` (H x W x 3 uint8), all in one batch; one `Caption` per image, in order.

    Greedy unless `temperature` > 0, which samples from the whole distribution (the folder's
    top_k/top_p are not applied: Qwen2.5-VL's top_k=1 would make every sample greedy), image k
    with its own generator seeded ``seed + k`` (a random seed when None). Each image is scaled to
    at most `max_pixels` pixels (a bound on its visual tokens). `report_token(done, max_tokens)`
    is called once per generated token (one per batch step); `should_stop()` is checked after
    every token.

    Raises:
        InvalidInput: no images, an image that is not H x W x 3 uint8 or too elongated,
            `max_tokens` outside 1..1024, a negative `temperature`, a `max_pixels` below one
            visual token.
        Cancelled: `should_stop()` turned true (before or during generation).
        OutOfMemory: the device ran out of memory.
    """
    import torch

    # 1. Check inputs
    _check_inputs(captioner, images, max_tokens, temperature, max_pixels)
    stop = should_stop or (lambda: False)
    if stop():
        raise Cancelled("cancelled before captioning")

    # 2. Prompts and pixels, left padded
    inputs = prepare_inputs(
        captioner, images, system_prompt=system_prompt, prompt=prompt, max_pixels=max_pixels
    )
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    # Padding takes the row's first token, not the pad token: attention ignores it either way,
    # but the repetition penalty counts every input token, and a pad token the row alone would
    # not have could tip its choice (the caption would depend on its batch).
    first = ids.gather(1, mask.argmax(dim=1, keepdim=True))
    inputs["input_ids"] = torch.where(mask.bool(), ids, first)
    model = captioner.model
    inputs = inputs.to(captioner.device)
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    prompt_length = ids.shape[1]

    # 3. Generation settings: the folder's (end tokens, repetition penalty, suppressed tokens)
    # with greedy choice; sampling, when asked, happens in a logits processor of our own.
    from transformers import LogitsProcessorList, StoppingCriteriaList

    config = model.generation_config.__class__.from_dict(model.generation_config.to_dict())
    # Sampling settings at their neutral values (None would be filled in from the folder's).
    config.update(
        do_sample=False,
        temperature=1.0,
        top_p=1.0,
        top_k=50,
        typical_p=1.0,
        num_beams=1,
        max_new_tokens=max_tokens,
    )
    config.max_length = None
    processors = LogitsProcessorList()
    if temperature:
        first_seed = secrets.randbelow(2**31) if seed is None else seed
        seeds = [first_seed + k for k in range(len(images))]
        processors.append(_SeededSampling(temperature, seeds))
    progress = _TokenProgress(prompt_length, max_tokens, report_token, stop)

    # 4. Generate, reporting each token and stopping when asked
    try:
        with captioner.lock, torch.inference_mode():
            sequences = model.generate(
                **inputs,
                generation_config=config,
                logits_processor=processors,
                stopping_criteria=StoppingCriteriaList([progress]),
            )
    except torch.OutOfMemoryError as exc:
        raise OutOfMemory(f"the device ran out of memory: {exc}") from exc
    if progress.stopped:
        raise Cancelled(f"cancelled after token {progress.done} of {max_tokens}")

    # 5. Decode and clean
    end_ids = config.eos_token_id
    end_ids = {end_ids} if isinstance(end_ids, int) else set(end_ids or ())
    captions = []
    for row in sequences[:, prompt_length:].tolist():
        ended = next((i for i, token in enumerate(row) if token in end_ids), None)
        kept = row if ended is None else row[:ended]
        raw = captioner.processor.tokenizer.decode(kept, skip_special_tokens=True)
        truncated = ended is None and len(row) >= max_tokens
        tokens = len(row) if ended is None else ended + 1
        captions.append(Caption(clean_caption(raw, truncated), raw, tokens, truncated))
    return captions


class _TokenProgress:
    """A stopping criterion that reports every generated token and stops when asked."""

    def __init__(
        self,
        prompt_length: int,
        total: int,
        report: Callable[[int, int], None] | None,
        should_stop: Callable[[], bool],
    ) -> None:
        self.prompt_length = prompt_length
        self.total = total
        self.report = report
        self.should_stop = should_stop
        self.done = 0
        self.stopped = False

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        self.done = input_ids.shape[1] - self.prompt_length
        if self.report is not None:
            self.report(self.done, self.total)
        self.stopped = self.stopped or bool(self.should_stop())
        return torch.full((input_ids.shape[0],), self.stopped, device=input_ids.device)


class _SeededSampling:
    """Samples each row's next token with the row's own generator and leaves only that token
    possible (generate's own sampling draws from torch's global generator, which every thread
    of the process shares, and one draw per batch would tie a caption to its batch)."""

    def __init__(self, temperature: float, seeds: Sequence[int]) -> None:
        import torch

        self.temperature = temperature
        self.generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        probs = torch.softmax(scores.float() / self.temperature, dim=-1).cpu()
        chosen = torch.cat(
            [
                torch.multinomial(row, 1, generator=gen)
                for row, gen in zip(probs, self.generators, strict=True)
            ]
        )
        only = torch.full_like(scores, float("-inf"))
        only.scatter_(1, chosen[:, None].to(scores.device), 0.0)
        return only
