"""CLIP tokenizer files (``vocab.json``, ``merges.txt``) derived from CLIP's BPE merge list.

Single-file checkpoints carry no tokenizer, and no hub is reached at run time, so the tokenizer
files SD 1.5 and SDXL need are written from ``bpe_simple_vocab_16e6.txt.gz``, the merge list
OpenAI's CLIP and open_clip ship (the PyPI package ``open-clip-torch`` has it; the Makefile
installs that package without its dependencies, as it pulls torchvision). The construction is
CLIP's own: 256 byte symbols, the same with ``</w>``, one symbol per merge, then the two special
tokens: 49408 tokens, ``<|startoftext|>`` = 49406, ``<|endoftext|>`` = 49407, identical to
``openai/clip-vit-large-patch14``'s files. With ``merges`` < 48894 the same construction gives a
small vocabulary for tiny test models.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from functools import cache
from pathlib import Path

from assetbox.errors import ModelError

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
FULL_MERGES = 49152 - 256 - 2  # CLIP's vocabulary is 49408 = 512 byte symbols + merges + 2
MAX_LENGTH = 77


def bpe_path() -> Path:
    """Where CLIP's merge list is: inside the installed open_clip package (not imported: it
    would import torchvision)."""
    spec = importlib.util.find_spec("open_clip")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / BPE_FILE
        if path.is_file():
            return path
    raise ModelError(
        f"CLIP's {BPE_FILE} was not found: install it with "
        "`pip install --no-deps open-clip-torch` (make install does)"
    )


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) reversible map of bytes to printable characters.

    Written out because the vocabulary's order depends on it exactly, and transformers 5 no
    longer exports it.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


@cache
def _merge_lines() -> tuple[str, ...]:
    lines = gzip.decompress(bpe_path().read_bytes()).decode("utf-8").split("\n")
    return tuple(lines[1 : 1 + FULL_MERGES])  # line 0 is the "#version" header


def write_clip_tokenizer(folder: Path, *, merges: int = FULL_MERGES, pad_token: str | None = None):
    """Write a CLIPTokenizer folder: vocab.json, merges.txt, tokenizer_config.json.

    `pad_token`: None pads with ``<|endoftext|>`` (CLIP-L, SD 1.5, SDXL's first tokenizer);
    SDXL's second tokenizer pads with ``!``.
    """
    chosen = _merge_lines()[:merges]
    symbols = list(bytes_to_unicode().values())
    vocab = [*symbols, *(s + "</w>" for s in symbols), *(m.replace(" ", "") for m in chosen)]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(
        json.dumps({token: i for i, token in enumerate(vocab)}, ensure_ascii=False)
    )
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(chosen) + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MAX_LENGTH,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad_token or "<|endoftext|>",
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return len(vocab)
