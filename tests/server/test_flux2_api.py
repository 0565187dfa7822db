"""FLUX.2 [klein] generate with weighted references through the HTTP API (tiny random model)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.server.test_diffusion_api import WAIT, make_client, png_of

pytestmark = pytest.mark.usefixtures("one_thread")
ENTRIES = ["tiny-flux2_klein", "klein-a.safetensors", "tiny-sd15"]


@pytest.fixture(scope="session")
def tiny_klein(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny distilled klein (`tiny-flux2_klein/`), its LoRA `klein-a`, a tiny FLUX.2 [dev]
    (`tiny-flux2/`) and its LoRA `dev-a`, and a tiny SD 1.5 folder (a family that takes no
    references), written once per session."""
    from safetensors.torch import save_file

    from assetbox.testing.tiny_flux2 import build_flux2, flux2_lora_state_dict
    from assetbox.testing.tiny_models import build_pipeline, write

    out = tmp_path_factory.mktemp("tiny-klein")
    write("flux2_klein", out, loras=("klein-a",))
    dev = build_flux2()
    dev.save_pretrained(out / "tiny-flux2")
    # The tiny [dev]'s widths are klein's: its LoRA says what it is for, as kohya's files do.
    metadata = {"modelspec.architecture": "flux-2-dev/lora"}
    save_file(flux2_lora_state_dict(dev, "dev-a"), str(out / "dev-a.safetensors"), metadata)
    build_pipeline("sd15").save_pretrained(out / "tiny-sd15")
    return out


def b64_png(seed: int, size: tuple[int, int] = (64, 64)) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


BODY = {
    "model": "tiny-flux2_klein",
    "prompts": ["a red cat", "a blue dog"],
    "width": 80,
    "height": 64,
    "steps": 2,
    "seed": 7,
}


def test_generate_with_references_and_a_lora(tiny_klein: Path, tmp_path: Path) -> None:
    references = [{"image": b64_png(1), "weight": 1.0}, {"image": b64_png(2), "weight": 0.5}]
    with make_client(tiny_klein, tmp_path / "data", ENTRIES) as client:

        def generate(**change) -> list[bytes]:
            job = client.post("/v1/generate", json=BODY | change, headers=WAIT).json()
            return [png_of(client, job, n) for n in range(len(job["outputs"]))]

        first = generate(references=references)
        assert len(first) == 2 and first[0] != first[1]
        for data in first:
            assert Image.open(io.BytesIO(data)).size == (80, 64)
        assert generate(references=references) == first  # same seed: the same bytes
        one = {"prompts": BODY["prompts"][:1]}  # the first prompt alone: the same seed, 7
        plain = generate(**one)
        assert plain[0] != first[0]  # the references count
        reweighted = [references[0], references[1] | {"weight": 2.0}]
        assert generate(**one, references=reweighted)[0] not in (first[0], plain[0])
        with_lora = generate(**one, loras=[{"name": "klein-a", "weight": 1.0}])
        assert with_lora[0] != plain[0]
        assert generate(**one) == plain  # the LoRA left nothing active


def test_flux2_dev_generates_with_references(tiny_klein: Path, tmp_path: Path) -> None:
    # Its tiny tokenizer stands in for the PixtralProcessor (which needs torchvision).
    references = [{"image": b64_png(4), "weight": 0.5}, {"image": b64_png(5, (64, 96))}]
    entries = ["tiny-flux2", "dev-a.safetensors"]
    with make_client(tiny_klein, tmp_path / "data", entries, executor="thread") as client:

        def generate(**change) -> bytes:
            body = BODY | {"model": "tiny-flux2", "prompts": ["a"]} | change
            return png_of(client, client.post("/v1/generate", json=body, headers=WAIT).json())

        first = generate(references=references)
        assert Image.open(io.BytesIO(first)).size == (80, 64)
        assert generate(references=references) == first
        plain = generate()
        assert plain != first
        assert generate(loras=[{"name": "dev-a"}]) != plain
        assert generate() == plain  # the LoRA left nothing active


def test_the_prompts_of_a_job_share_the_reference_encodes(
    tiny_klein: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from diffusers import AutoencoderKLFlux2

    encode = AutoencoderKLFlux2.encode
    calls = []

    def counting(self, *args, **kwargs):
        calls.append(1)
        return encode(self, *args, **kwargs)

    monkeypatch.setattr(AutoencoderKLFlux2, "encode", counting)
    references = [{"image": b64_png(6)}, {"image": b64_png(7), "weight": 0.5}]
    # In-process worker threads, so the count sees the worker's encodes.
    with make_client(tiny_klein, tmp_path / "data", ENTRIES, executor="thread") as client:
        body = BODY | {"prompts": ["a", "b", "c", "d"], "steps": 1, "references": references}
        job = client.post("/v1/generate", json=body, headers=WAIT).json()
        assert len({png_of(client, job, n) for n in range(4)}) == 4
    assert len(calls) == 2  # one per reference, not one per prompt (unit) and reference


def test_sixteen_references_are_accepted(tiny_klein: Path, tmp_path: Path) -> None:
    references = [{"image": b64_png(100 + n)} for n in range(16)]
    with make_client(tiny_klein, tmp_path / "data", ENTRIES, executor="thread") as client:
        body = BODY | {"prompts": ["a"], "width": 64, "references": references}
        job = client.post("/v1/generate", json=body, headers=WAIT).json()
        assert Image.open(io.BytesIO(png_of(client, job))).size == (64, 64)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"references": [{"image": b64_png(3)}] * 17}, "references"),
        ({"references": [{"image": b64_png(3, (64, 63))}]}, "references.0.image"),
        ({"references": [{"image": b64_png(3, (520, 64))}]}, "references.0.image"),
        ({"references": [{"image": b64_png(3), "weight": 4.5}]}, "references.0.weight"),
        ({"references": [{"image": "not base64!"}]}, "references.0.image"),
        ({"model": "tiny-sd15", "references": [{"image": b64_png(3)}]}, "references"),
    ],
)
def test_invalid_references_name_the_field_and_queue_nothing(
    tiny_klein: Path, tmp_path: Path, change: dict, field: str
) -> None:
    with make_client(tiny_klein, tmp_path / "data", ENTRIES) as client:
        response = client.post("/v1/generate", json=BODY | change)
        assert response.status_code == 422, response.text
        assert response.json()["field"] == field
        assert client.get("/v1/jobs").json()["data"] == []
