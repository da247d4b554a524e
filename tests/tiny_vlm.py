"""Tiny Qwen VL checkpoints for the VLM prior tests (built offline, random weights).

The builders of the three Qwen VL families live in the library
(``pipeline.priors._vlm_tiny``, shared with ``phyvlm-cr benchmark prior``); this module
adds the wrong-checkpoint case the tests need.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.priors._vlm_tiny import FAMILIES, TINY_TEXT, build_tiny_vlm, qwen_tokenizer_dir

__all__ = ["FAMILIES", "build_text_only_model", "build_tiny_vlm", "qwen_tokenizer_dir"]


def build_text_only_model(folder: str | Path) -> Path:
    """A tiny Qwen2 *text-only* causal LM with the real tokenizer (a wrong checkpoint)."""
    import transformers as tf

    folder = Path(folder)
    text = {k: v for k, v in TINY_TEXT.items() if k != "rope_parameters"}
    model = tf.AutoModelForCausalLM.from_config(tf.Qwen2Config(**text))
    model.save_pretrained(folder)
    tf.AutoTokenizer.from_pretrained(qwen_tokenizer_dir()).save_pretrained(folder)
    return folder
