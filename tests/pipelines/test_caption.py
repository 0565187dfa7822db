"""Captioning with tiny random Qwen2.5-VL and Qwen3-VL models, loaded as real ones are."""

from __future__ import annotations

import math
from pathlib import Path

import jinja2
import numpy as np
import pytest
import torch
from PIL import Image

from assetbox.errors import Cancelled, InvalidInput
from assetbox.models.cache import ModelCache
from assetbox.pipelines.caption import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_SYSTEM_PROMPT,
    Captioner,
    caption,
    clean_caption,
    estimate_captioner_bytes,
    load_captioner,
    prepare_inputs,
)
from assetbox.testing.tiny_models import CAPTIONER_FAMILIES, write_captioner
from tests.utils.images import photo

FAMILIES = list(CAPTIONER_FAMILIES)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("tiny-captioners")
    return {family: write_captioner(family, out / f"tiny-{family}") for family in FAMILIES}


@pytest.fixture(scope="module")
def captioners(folders: dict[str, Path]) -> dict[str, Captioner]:
    return {family: load_captioner(folder) for family, folder in folders.items()}


@pytest.fixture(params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def captioner(captioners: dict[str, Captioner], family: str, one_thread) -> Captioner:
    return captioners[family]


def tiles() -> list[np.ndarray]:
    """Four crops of three photos, all of different sizes (so a batch of them is padded)."""
    astronaut, chelsea, coffee = photo("astronaut"), photo("chelsea"), photo("coffee")
    # Chosen so that both tiny models give four different captions, some ending early.
    return [
        np.ascontiguousarray(crop)
        for crop in (
            astronaut[0:96, 0:64],
            chelsea[40:120, 100:220],
            astronaut[30:130, 150:260],
            coffee[150:250, 200:300],
        )
    ]


# -- the processor -------------------------------------------------------------------------------


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int):
    """Qwen2-VL's size rule (qwen-vl-utils): both sides multiples of `factor`, the pixel count
    within [min_pixels, max_pixels], the aspect ratio kept as well as that allows."""
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def reference_patches(image: np.ndarray, image_processor, max_pixels: int):
    """Pixels as the Qwen2-VL image processor first published them (transformers 4.45's
    Qwen2VLImageProcessor: bicubic resize, rescale, normalize, then patches in merge order),
    written out here: the processor under test must give exactly these."""
    patch, merge = image_processor.patch_size, image_processor.merge_size
    temporal = image_processor.temporal_patch_size
    min_pixels = min(image_processor.size.shortest_edge, max_pixels)
    height, width = smart_resize(*image.shape[:2], patch * merge, min_pixels, max_pixels)
    resized = Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC)
    # The published arithmetic: rescale in float64 to float32, normalize in float32.
    rescaled = (np.asarray(resized).astype(np.float64) * (1 / 255)).astype(np.float32)
    mean = np.array(image_processor.image_mean, dtype=np.float32)
    std = np.array(image_processor.image_std, dtype=np.float32)
    pixels = ((rescaled - mean) / std).transpose(2, 0, 1)
    frames = np.stack([pixels] * temporal)  # one image: the same frame twice
    grid_h, grid_w = height // patch, width // patch
    patches = frames.reshape(
        1, temporal, 3, grid_h // merge, merge, patch, grid_w // merge, merge, patch
    ).transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return patches.reshape(grid_h * grid_w, 3 * temporal * patch * patch), (1, grid_h, grid_w)


def reference_ids(folder: Path, tokenizer, image_tokens: int) -> list[int]:
    """The prompt rendered straight from the folder's chat template (with transformers'
    Jinja settings), one image placeholder expanded to `image_tokens` tokens."""
    template = (folder / "chat_template.jinja").read_text()
    environment = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    conversation = [
        {"role": "system", "content": [{"type": "text", "text": DEFAULT_SYSTEM_PROMPT}]},
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}],
        },
    ]
    text = environment.from_string(template).render(
        messages=conversation, add_generation_prompt=True
    )
    assert text.count("<|image_pad|>") == 1
    text = text.replace("<|image_pad|>", "<|image_pad|>" * image_tokens)
    return tokenizer(text)["input_ids"]


@pytest.mark.parametrize("max_pixels", [DEFAULT_MAX_PIXELS, 64 * 64])
def test_the_image_only_processor_gives_the_published_pixels_and_prompt(
    captioner: Captioner, folders: dict[str, Path], family: str, max_pixels: int
) -> None:
    images = [*tiles()[:2], photo("coffee")]  # 400x600: scaled down to max_pixels
    inputs = prepare_inputs(captioner, images, max_pixels=max_pixels)
    image_processor = captioner.processor.image_processor
    tokenizer = captioner.processor.tokenizer
    merge = image_processor.merge_size
    offset = 0
    for row, image in enumerate(images):
        expected, grid = reference_patches(image, image_processor, max_pixels)
        assert tuple(inputs["image_grid_thw"][row].tolist()) == grid
        pixels = inputs["pixel_values"][offset : offset + len(expected)].numpy()
        np.testing.assert_array_equal(pixels, expected)
        offset += len(expected)

        ids = reference_ids(folders[family], tokenizer, grid[1] * grid[2] // merge**2)
        mask = inputs["attention_mask"][row].tolist()
        padding = len(mask) - len(ids)
        assert mask == [0] * padding + [1] * len(ids)  # left padded
        assert inputs["input_ids"][row].tolist()[padding:] == ids
        image_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
        types = inputs["mm_token_type_ids"][row].tolist()[padding:]
        assert types == [int(token == image_id) for token in ids]
    assert offset == len(inputs["pixel_values"])
    if max_pixels == DEFAULT_MAX_PIXELS:
        assert inputs["attention_mask"].min() == 0  # the batch was padded


def test_max_pixels_bounds_the_visual_tokens_of_a_1024_tile(captioner: Captioner) -> None:
    tile = np.asarray(Image.fromarray(photo("astronaut")).resize((1024, 1024)))
    factor = captioner.processor.image_processor.patch_size * 2  # one token per factor² pixels
    for max_pixels in (DEFAULT_MAX_PIXELS, 12 * 12 * factor**2):
        grid = prepare_inputs(captioner, [tile], max_pixels=max_pixels)["image_grid_thw"][0]
        tokens = int(grid.prod()) // 4
        assert 0.75 * max_pixels / factor**2 <= tokens <= max_pixels / factor**2
    # The model's own cap would let the tile cost (1024 / factor)² tokens: 1369 or 1024.
    default = prepare_inputs(captioner, [tile])["image_grid_thw"][0]
    assert int(default.prod()) // 4 <= 256


# -- captions ------------------------------------------------------------------------------------


def test_a_batch_gives_the_captions_each_image_gets_alone(captioner: Captioner) -> None:
    images = tiles()
    batch = caption(captioner, images, max_tokens=24)
    alone = [caption(captioner, [image], max_tokens=24)[0] for image in images]
    assert batch == alone
    # Otherwise the comparison proves little: four different captions, some ending early (their
    # rows wait, padded, for the others), none empty.
    assert len({c.raw for c in batch}) == 4
    assert all(c.text for c in batch)
    assert any(not c.truncated for c in batch) and any(c.truncated for c in batch)
    # A cut caption used the whole budget; one that ended by itself ended before it.
    assert {c.tokens for c in batch if c.truncated} == {24}
    assert all(c.tokens < 24 for c in batch if not c.truncated)
    for c in batch:
        assert "\n" not in c.text and "<|" not in c.raw


def test_the_same_request_gives_the_same_captions(captioner: Captioner) -> None:
    images = tiles()[:3]
    assert caption(captioner, images, max_tokens=12) == caption(captioner, images, max_tokens=12)
    assert caption(captioner, images, max_tokens=12, temperature=0) == caption(
        captioner, images, max_tokens=12
    )


def test_sampling_repeats_with_its_seed_and_image_k_uses_seed_plus_k(
    captioner: Captioner,
) -> None:
    images = tiles()[:3]
    greedy = caption(captioner, images, max_tokens=12)
    first = caption(captioner, images, max_tokens=12, temperature=1.0, seed=7)
    assert first == caption(captioner, images, max_tokens=12, temperature=1.0, seed=7)
    assert first != caption(captioner, images, max_tokens=12, temperature=1.0, seed=8)
    assert first != greedy  # the folder's top_k=1 (Qwen2.5-VL's) does not make it greedy
    alone = [
        caption(captioner, [image], max_tokens=12, temperature=1.0, seed=7 + k)[0]
        for k, image in enumerate(images)
    ]
    assert first == alone


def test_threads_sharing_a_captioner_get_their_own_captions(captioner: Captioner) -> None:
    """generate() keeps per-call state on the model (Qwen's rope deltas); calls from several
    threads (worker threads may share a cached captioner) still get their own captions."""
    from concurrent.futures import ThreadPoolExecutor

    requests = [tiles()[:1], tiles()[1:], tiles()[:1], tiles()[1:]]
    expected = [caption(captioner, images, max_tokens=16) for images in requests]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda images: caption(captioner, images, max_tokens=16), requests))
    assert results == expected


def test_report_token_is_called_once_per_generated_token(captioner: Captioner) -> None:
    calls: list[tuple[int, int]] = []
    captions = caption(
        captioner,
        tiles(),
        max_tokens=20,
        report_token=lambda done, total: calls.append((done, total)),
    )
    steps = max(c.tokens for c in captions)
    assert calls == [(done, 20) for done in range(1, steps + 1)]


@pytest.mark.parametrize("stop_after", [1, 3])
def test_cancellation_stops_within_one_token(captioner: Captioner, stop_after: int) -> None:
    reported: list[int] = []
    flag = {"stop": False}

    def report(done: int, total: int) -> None:
        reported.append(done)
        if done == stop_after:
            flag["stop"] = True

    with pytest.raises(Cancelled):
        caption(
            captioner, tiles(), max_tokens=30, report_token=report, should_stop=lambda: flag["stop"]
        )
    after = [done for done in reported if done > stop_after]
    assert len(after) <= 1
    assert after == []  # checked right after the report of the token it turned true in


def test_cancellation_between_tokens_from_the_outside(captioner: Captioner) -> None:
    """`should_stop` turns true while a token is being computed: the next check ends it."""
    calls = {"stop_checks": 0}
    reported: list[int] = []

    def should_stop() -> bool:
        calls["stop_checks"] += 1
        return calls["stop_checks"] > 3  # true from the 4th check (after token 3) on

    with pytest.raises(Cancelled, match="token 3 of 30"):
        caption(
            captioner,
            tiles(),
            max_tokens=30,
            report_token=lambda done, total: reported.append(done),
            should_stop=should_stop,
        )
    assert reported == [1, 2, 3]


def test_a_stop_asked_before_the_start_runs_nothing(captioner: Captioner) -> None:
    reported: list[int] = []
    with pytest.raises(Cancelled):
        caption(
            captioner,
            tiles(),
            report_token=lambda d, t: reported.append(d),
            should_stop=lambda: True,
        )
    assert reported == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"images": []}, "images"),
        ({"images": [np.zeros((32, 32), np.uint8)]}, "images"),
        ({"images": [np.zeros((32, 32, 3), np.float32)]}, "images"),
        ({"images": [np.zeros((2, 500, 3), np.uint8)]}, "images"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 5000}, "max_tokens"),
        ({"temperature": -0.5}, "temperature"),
        ({"max_pixels": 100}, "max_pixels"),
    ],
)
def test_bad_arguments_are_refused_naming_them(
    captioners: dict[str, Captioner], kwargs: dict, field: str
) -> None:
    arguments = {"images": tiles()[:1]} | kwargs
    images = arguments.pop("images")
    with pytest.raises(InvalidInput) as error:
        caption(captioners["qwen2_5_vl"], images, **arguments)
    assert error.value.field == field
    assert f"`{field}" in error.value.message


# -- loading and the model cache ------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU policy")
def test_float32_on_a_cpu(captioner: Captioner) -> None:
    assert captioner.device == "cpu"
    assert captioner.model.dtype == torch.float32


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_half_precision_on_cuda(folders: dict[str, Path], family: str) -> None:
    loaded = load_captioner(folders[family])
    assert loaded.device == "cuda"
    assert loaded.model.dtype == (
        torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    )
    greedy = caption(loaded, tiles(), max_tokens=12)
    assert len(greedy) == 4 and all(1 <= c.tokens <= 12 for c in greedy)
    assert caption(loaded, tiles(), max_tokens=12) == greedy
    sampled = caption(loaded, tiles(), max_tokens=12, temperature=1.0, seed=3)
    assert caption(loaded, tiles(), max_tokens=12, temperature=1.0, seed=3) == sampled


def test_the_estimate_is_the_loaded_size_and_the_cache_counts_it(
    folders: dict[str, Path], family: str
) -> None:
    folder = folders[family]
    estimate = estimate_captioner_bytes(folder)
    cache = ModelCache(budget_bytes=10 * estimate)
    with cache.lease(
        f"captioner:tiny-{family}",
        lambda: load_captioner(folder),
        estimate=estimate,
        exclusive=True,
    ) as loaded:
        assert isinstance(loaded, Captioner)
        # Parameters and buffers (the rotary frequencies are buffers, not in the file).
        assert estimate <= loaded.nbytes <= estimate * 1.01
        assert cache.stats().resident_bytes == loaded.nbytes


# -- cleaning ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "truncated", "expected"),
    [
        (
            "The image shows a red brick wall, ivy, soft light.",
            False,
            "a red brick wall, ivy, soft light.",
        ),
        ("The image depicts an old oak tree at dusk", False, "an old oak tree at dusk"),
        ("This is an image of a cat on a sofa.", False, "a cat on a sofa."),
        ("This image features a glass vase", False, "a glass vase"),
        ("In this image, a woman in a red coat", False, "a woman in a red coat"),
        ("In the image there is a boat", False, "a boat"),
        ("Caption: stone arch, moss", False, "stone arch, moss"),
        ("A close-up photo of a rusty gear", False, "A close-up photo of a rusty gear"),
        ("A photo of a cat", False, "A photo of a cat"),
        ("An image of a cat", False, "a cat"),
        ("the picture shows: a dog", False, "a dog"),
        ('"A lighthouse on a cliff"', False, "A lighthouse on a cliff"),
        ("\u201cmisty forest\u201d, \u2018soft light\u2019", False, "misty forest, soft light"),
        ("the artist's brush, children's toys", False, "the artist's brush, children's toys"),
        ("**Subject:** an astronaut", False, "Subject: an astronaut"),
        ("- red car\n- wet street\n- neon light", False, "red car, wet street, neon light"),
        ("# Caption\nA portrait.\nSoft light.", False, "Caption, A portrait. Soft light."),
        ("a `tree`", False, "a tree"),
        ("line one\n\nline two", False, "line one, line two"),
        (
            "<think>the user wants a caption</think>\n\ngolden field, wheat",
            False,
            "golden field, wheat",
        ),
        (". face. wood", False, "face. wood"),
        ("red wall , soft light ,", False, "red wall, soft light"),
        # Truncated: back to the last sentence end, else the last comma, else as it is.
        ("A red wall. Ivy climbs the bri", True, "A red wall."),
        ("A red wall! More. Ivy climbs the", True, "A red wall! More."),
        ("red wall, ivy, warm light on the bri", True, "red wall, ivy"),
        ("a single long phrase without end", True, "a single long phrase without end"),
        ("The image shows a red wall. Ivy", True, "a red wall."),
        ("A red wall. Ivy climbs", False, "A red wall. Ivy climbs"),
        ("", False, ""),
        ("The image shows", False, ""),
    ],
)
def test_clean_caption(raw: str, truncated: bool, expected: str) -> None:
    assert clean_caption(raw, truncated) == expected


def test_clean_caption_of_real_model_output() -> None:
    raw = (
        "The image shows an astronaut in a white space suit, holding a helmet, in front of an "
        "American flag. The lighting is bright and even, studio photography, and the back"
    )
    assert clean_caption(raw, truncated=True) == (
        "an astronaut in a white space suit, holding a helmet, in front of an American flag."
    )
