"""Factories for model files: tiny hand-written ncnn networks and the built-in store."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

FP16_TAG = 0x01306B47


def _conv_line(name: str, bottom: str, top: str, out_ch: int, in_ch: int) -> str:
    return f"Convolution {name} 1 1 {bottom} {top} 0={out_ch} 1=3 4=1 5=1 6={out_ch * in_ch * 9}"


def write_tiny_compact(
    folder: Path,
    *,
    fp16: bool,
    num_feat: int = 4,
    num_conv: int = 1,
    upscale: int = 2,
    seed: int = 0,
    name: str = "tiny",
) -> tuple[Path, dict[str, np.ndarray]]:
    """A random SRVGGNetCompact written as ncnn .param/.bin, and its expected state dict.

    Laid out the way the ONNX-exported Real-ESRGAN files are: convolutions with fused bias,
    PReLU, a pixel shuffle, and the nearest-upsampled input added at the end.
    """
    rng = np.random.default_rng(seed)
    lines, blobs, state = [], bytearray(), {}
    lines.append("Input data 0 1 data")
    lines.append("Split split 1 2 data in0 in1")
    current, index = "in1", 0
    channels = [(num_feat, 3)] + [(num_feat, num_feat)] * num_conv + [(3 * upscale**2, num_feat)]
    for step, (out_ch, in_ch) in enumerate(channels):
        weight = rng.normal(0, 0.2, (out_ch, in_ch, 3, 3)).astype(np.float32)
        bias = rng.normal(0, 0.05, out_ch).astype(np.float32)
        if fp16:
            weight = weight.astype(np.float16).astype(np.float32)  # what the file can hold
            data = weight.astype("<f2").tobytes()
            blobs += struct.pack("<I", FP16_TAG) + data + b"\0" * (-len(data) % 4)
        else:
            blobs += struct.pack("<I", 0) + weight.astype("<f4").tobytes()
        blobs += bias.astype("<f4").tobytes()
        lines.append(_conv_line(f"conv{step}", current, f"c{step}", out_ch, in_ch))
        state[f"body.{index}.weight"], state[f"body.{index}.bias"] = weight, bias
        current, index = f"c{step}", index + 1
        if step < len(channels) - 1:
            slope = rng.uniform(0.05, 0.3, out_ch).astype(np.float32)
            blobs += slope.astype("<f4").tobytes()
            lines.append(f"PReLU prelu{step} 1 1 {current} p{step} 0={out_ch}")
            state[f"body.{index}.weight"] = slope
            current, index = f"p{step}", index + 1
    lines.append(f"PixelShuffle shuffle 1 1 {current} shuffled 0={upscale}")
    lines.append(f"Interp base 1 1 in0 based 0=1 1={upscale:.6e} 2={upscale:.6e}")
    lines.append("BinaryOp add 2 1 shuffled based output")
    blob_names = {top for line in lines for top in line.split()[4:] if "=" not in top}
    header = f"7767517\n{len(lines)} {len(blob_names)}\n"
    param = folder / f"{name}.param"
    param.write_text(header + "\n".join(lines) + "\n")
    param.with_suffix(".bin").write_bytes(bytes(blobs))
    return param, state
