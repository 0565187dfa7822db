from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from assetbox.errors import UnsupportedFormat
from assetbox.models.ncnn import convert, parse_param
from tests.utils.models import write_tiny_compact


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_tiny_compact_converts_to_the_exact_weights(tmp_path: Path, fp16: bool) -> None:
    param, expected = write_tiny_compact(tmp_path, fp16=fp16)
    conversion = convert(param)
    assert conversion.architecture == "SRVGGNetCompact"
    assert conversion.weight_dtype == ("fp16" if fp16 else "fp32")
    assert conversion.network_scale == 2 and conversion.post_resize is None
    assert conversion.state_dict.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_array_equal(conversion.state_dict[key], value, err_msg=key)


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_tiny_compact_runs_like_ncnn(tmp_path: Path, fp16: bool) -> None:
    import ncnn
    import torch

    from assetbox.models.architectures import load_descriptor

    param, _ = write_tiny_compact(tmp_path, fp16=fp16, num_conv=2)
    conversion = convert(param)
    model = load_descriptor({k: torch.from_numpy(v) for k, v in conversion.state_dict.items()})
    pixels = np.random.default_rng(1).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    with torch.inference_mode():
        x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255
        ours = model.model.eval()(x)[0].numpy()
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.load_param(str(param))
    net.load_model(str(param.with_suffix(".bin")))
    mat = ncnn.Mat.from_pixels(pixels.tobytes(), ncnn.Mat.PixelType.PIXEL_RGB, 10, 12)
    mat.substract_mean_normalize([], [1 / 255] * 3)
    extractor = net.create_extractor()
    extractor.input("data", mat)
    _, out = extractor.extract("output")
    np.testing.assert_allclose(np.asarray(out), ours, atol=1e-4)


def test_param_with_wrong_magic_is_refused() -> None:
    with pytest.raises(UnsupportedFormat, match=r"not an ncnn \.param"):
        parse_param("1234\n1 1\nInput data 0 1 data\n")


def test_param_with_wrong_layer_count_is_refused() -> None:
    with pytest.raises(UnsupportedFormat, match="announces 2 layers but has 1"):
        parse_param("7767517\n2 1\nInput data 0 1 data\n")


def test_bin_that_ends_early_is_refused(tmp_path: Path) -> None:
    param, _ = write_tiny_compact(tmp_path, fp16=False)
    bin_path = param.with_suffix(".bin")
    bin_path.write_bytes(bin_path.read_bytes()[:-10])
    with pytest.raises(UnsupportedFormat, match="ends early"):
        convert(param)


def test_bin_with_bytes_left_over_is_refused(tmp_path: Path) -> None:
    param, _ = write_tiny_compact(tmp_path, fp16=False)
    bin_path = param.with_suffix(".bin")
    bin_path.write_bytes(bin_path.read_bytes() + b"\0" * 8)
    with pytest.raises(UnsupportedFormat, match="left over"):
        convert(param)


def test_int8_weights_are_refused(tmp_path: Path) -> None:
    param, _ = write_tiny_compact(tmp_path, fp16=False)
    bin_path = param.with_suffix(".bin")
    data = bytearray(bin_path.read_bytes())
    data[:4] = struct.pack("<I", 0x000D4B38)
    bin_path.write_bytes(bytes(data))
    with pytest.raises(UnsupportedFormat, match="int8"):
        convert(param)


def test_unknown_layers_are_refused(tmp_path: Path) -> None:
    param, _ = write_tiny_compact(tmp_path, fp16=False)
    param.write_text(param.read_text().replace("PReLU prelu0", "InnerProduct prelu0"))
    with pytest.raises(UnsupportedFormat, match="InnerProduct"):
        convert(param)


def test_missing_bin_is_refused(tmp_path: Path) -> None:
    param, _ = write_tiny_compact(tmp_path, fp16=False)
    param.with_suffix(".bin").unlink()
    with pytest.raises(UnsupportedFormat, match="does not exist"):
        convert(param)
