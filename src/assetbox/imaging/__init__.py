"""Pure image work (numpy, Pillow; never torch): codecs, tile plans, blending, colour fix."""

from assetbox.imaging.blend import RAMPS, Band, Ramp, TileBlender, axis_weights, blend_tiles, ramp
from assetbox.imaging.codec import (
    FORMATS,
    MEDIA_TYPES,
    DecodedImage,
    ImageFormat,
    decode_base64,
    decode_image,
    encode_base64,
    encode_image,
    probe_image,
    to_uint8,
    verify_image,
)
from assetbox.imaging.color import (
    COLOR_FIXES,
    ColorFix,
    adain_color_fix,
    color_fix,
    wavelet_color_fix,
)
from assetbox.imaging.noise import batch_noise, noise_field
from assetbox.imaging.seams import (
    SEAM_LINES,
    SeamLine,
    seam_energy_ratio,
    seam_energy_ratios,
)
from assetbox.imaging.tiles import Tile, TilePlan, extract_tile
from assetbox.imaging.transfer import Transfer, from_working, to_working

__all__ = [
    "COLOR_FIXES",
    "FORMATS",
    "MEDIA_TYPES",
    "RAMPS",
    "SEAM_LINES",
    "Band",
    "ColorFix",
    "DecodedImage",
    "ImageFormat",
    "Ramp",
    "SeamLine",
    "Tile",
    "TileBlender",
    "TilePlan",
    "Transfer",
    "adain_color_fix",
    "axis_weights",
    "batch_noise",
    "blend_tiles",
    "color_fix",
    "decode_base64",
    "decode_image",
    "encode_base64",
    "encode_image",
    "extract_tile",
    "from_working",
    "noise_field",
    "probe_image",
    "ramp",
    "seam_energy_ratio",
    "seam_energy_ratios",
    "to_uint8",
    "to_working",
    "verify_image",
    "wavelet_color_fix",
]
