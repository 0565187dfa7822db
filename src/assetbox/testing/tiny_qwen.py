"""The byte-level Qwen tokenizer every tiny Qwen-based model here uses (captioners, the text
encoders of Qwen-Image, Z-Image and FLUX.2 klein), with no hub: 256 byte symbols, Qwen's
special tokens, merges spelling a few words."""

from __future__ import annotations

# Qwen's special tokens in their real order (Qwen2.5-VL and Qwen3-VL ids 151643-151656).
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
CAPTION_WORDS: tuple[str, ...] = (
    "stone",
    "wall",
    "red",
    "blue",
    "green",
    "light",
    "soft",
    "metal",
    "wood",
    "glass",
    "sky",
    "tree",
    "leaf",
    "water",
    "face",
    "hair",
    "cloth",
    "brick",
    "sand",
    "gold",
    "dark",
    "warm",
    "cold",
    "shadow",
    "grass",
    "rock",
    "fur",
    "eye",
    "sun",
    "cloud",
)
CAPTIONER_VOCAB = 384  # 256 bytes + 14 special tokens + the word merges (105), rounded up
# Qwen2.5-VL's own chat template (from its hub folder).
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def qwen_tokenizer():
    """A byte-level Qwen2Tokenizer: byte symbols, Qwen's special tokens, merges spelling
    `CAPTION_WORDS` (each with its leading space, as ``Ġstone``)."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    from assetbox.models.tokenizers import bytes_to_unicode

    vocab = {symbol: i for i, symbol in enumerate(bytes_to_unicode().values())}
    for token in QWEN_SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in CAPTION_WORDS:
        piece = "Ġ"
        for char in word:
            if (piece, char) not in merges:
                merges.append((piece, char))
            piece += char
            vocab.setdefault(piece, len(vocab))
    assert len(vocab) <= CAPTIONER_VOCAB
    tokenizer = Qwen2Tokenizer(
        vocab=vocab, merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.add_tokens(
        [AddedToken(t, special=True) for t in QWEN_SPECIAL_TOKENS], special_tokens=True
    )
    return tokenizer


# Qwen3's chat template, cut to what the Z-Image and FLUX.2 klein pipelines render: one user turn,
# the generation prompt, and with `enable_thinking` false the empty thinking block Qwen3 writes.
QWEN3_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}"
    "<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
