"""Loading a Qwen VL checkpoint once per process, and scoring labels on batches of crops.

The model, its image processor and tokenizer live in a per-process cache keyed by
``ScorerSpec`` (model path/id, device, dtype, labels, prompt), so every Dask worker process
loads a checkpoint once, and the prior object that travels in the task graph holds only the
spec (a few strings). ``load_events()`` records each load (pid, key, seconds) for logs and
tests.

Scoring: every crop is resized by the caller to the same quicklook size, so all prompts have
the same number of image tokens and a batch needs no padding. One forward pass per batch
reads only the next-token logits at the answer position (``logits_to_keep=1``) and takes a
softmax restricted to the first token of each label word: no generation, no text parsing.

Image preprocessing uses the checkpoint's own image processor with the PIL/numpy backend
(``AutoImageProcessor.from_pretrained(..., backend="pil")``), so torchvision is never needed.

torch and transformers are imported lazily (the ``vlm`` extra); a missing install says so.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: ``model_type`` values of the checkpoints the VLM prior understands.
SUPPORTED_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")

_SYSTEM = "You are a helpful assistant."


@dataclass(frozen=True)
class ScorerSpec:
    """What identifies a loaded scorer (the cache key)."""

    model: str
    labels: tuple[str, ...]
    prompt: str
    device: str = "auto"
    dtype: str = "auto"


@dataclass(frozen=True)
class LoadEvent:
    pid: int
    spec: ScorerSpec
    device: str
    dtype: str
    seconds: float


_CACHE: dict[ScorerSpec, LabelScorer] = {}
_CACHE_LOCK = threading.Lock()
_LOAD_EVENTS: list[LoadEvent] = []


def load_events() -> tuple[LoadEvent, ...]:
    """Every checkpoint load of this process (for logs, and tests of once-per-worker)."""
    return tuple(_LOAD_EVENTS)


def clear_cache() -> None:
    """Forget the loaded scorers of this process (frees their memory)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def get_scorer(spec: ScorerSpec) -> LabelScorer:
    """The process's scorer for ``spec``, loading the checkpoint on first use (thread-safe)."""
    scorer = _CACHE.get(spec)
    if scorer is not None:
        return scorer
    with _CACHE_LOCK:
        scorer = _CACHE.get(spec)
        if scorer is None:
            started = time.perf_counter()
            scorer = LabelScorer(spec)
            seconds = time.perf_counter() - started
            _CACHE[spec] = scorer
            _LOAD_EVENTS.append(
                LoadEvent(os.getpid(), spec, str(scorer.device), str(scorer.dtype), seconds)
            )
            log.info(
                "loaded VLM %s (%s) on %s as %s in %.1f s (pid %d)",
                spec.model,
                scorer.model_type,
                scorer.device,
                scorer.dtype,
                seconds,
                os.getpid(),
            )
    return scorer


#: What to type when the VLM prior's packages are missing (the `vlm` extra, pyproject.toml).
VLM_INSTALL_HINT = (
    "the VLM prior needs torch and transformers (the base install is the CPU pipeline without "
    "them); fix: pip install 'phyvlm-cr[vlm]', on a CPU machine after pip install torch "
    "--index-url https://download.pytorch.org/whl/cpu (README, Install)"
)


def check_vlm_installed() -> None:
    """Raise ImportError naming the `vlm` extra when torch or transformers is missing
    (checked without importing them: the client of a run needs neither)."""
    import importlib.util

    missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"{' and '.join(missing)} not installed: {VLM_INSTALL_HINT}")


def _import_torch_transformers() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(VLM_INSTALL_HINT) from exc
    return torch, transformers


def _looks_like_hub_id(model: str) -> bool:
    """'org/name' (one slash, no path prefix) is a hub id; anything else is a local path."""
    if model.startswith((".", "~", "/", "\\")) or "\\" in model or ":" in model:
        return False
    parts = model.split("/")
    return len(parts) == 2 and all(parts)


def resolve_checkpoint(model: str) -> str:
    """A local checkpoint folder (checked) or a hub id, with errors that name the fix."""
    if not model:
        raise ValueError(
            "the VLM prior needs a checkpoint: a local folder or a hub id such as "
            "'Qwen/Qwen2.5-VL-3B-Instruct'; fix: pass --vlm-model PATH_OR_ID (API: model=...)"
        )
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(
                f"VLM checkpoint {model!r} is a file; it must be a folder holding config.json, "
                "the weights, preprocessor_config.json and the tokenizer files"
            )
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"VLM checkpoint folder {model!r} has no config.json, so it is not a "
                "transformers checkpoint; fix: point --vlm-model at the folder written by "
                "save_pretrained / 'hf download Qwen/Qwen2.5-VL-3B-Instruct --local-dir DIR'"
            )
        return str(path)
    if not _looks_like_hub_id(model):
        raise FileNotFoundError(
            f"VLM checkpoint folder {model!r} does not exist; fix: check the path, or "
            "download a checkpoint on a machine with internet, e.g. "
            "'hf download Qwen/Qwen2.5-VL-3B-Instruct --local-dir DIR', and pass DIR"
        )
    return model


class LabelScorer:
    """A loaded checkpoint that returns label probabilities for batches of RGB crops."""

    def __init__(self, spec: ScorerSpec) -> None:
        torch, tf = _import_torch_transformers()
        self.spec = spec
        source = resolve_checkpoint(spec.model)
        try:
            config = tf.AutoConfig.from_pretrained(source)
        except OSError as exc:
            hint = (
                f" (no local folder {spec.model!r} exists, so it was taken as a hub id, which "
                "needs internet or the model already in the Hugging Face cache; fix: download "
                f"it where there is internet, e.g. 'hf download {spec.model} --local-dir DIR', "
                "and pass DIR)"
                if source == spec.model and not Path(source).exists()
                else ""
            )
            raise OSError(f"cannot load the VLM checkpoint {spec.model!r}: {exc}{hint}") from exc
        self.model_type = str(getattr(config, "model_type", ""))
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"VLM checkpoint {spec.model!r} is a {self.model_type or 'unknown'!r} model; "
                f"the VLM prior needs a Qwen vision-language checkpoint "
                f"({', '.join(SUPPORTED_MODEL_TYPES)}), e.g. Qwen/Qwen2.5-VL-3B-Instruct"
            )
        self.device, self.dtype = _placement(torch, spec.device, spec.dtype)
        try:
            self.image_processor = tf.AutoImageProcessor.from_pretrained(source, backend="pil")
            self.tokenizer = tf.AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as exc:
            raise OSError(
                f"VLM checkpoint {spec.model!r} lacks a usable image processor or tokenizer "
                f"({exc}); fix: the folder needs preprocessor_config.json and the tokenizer "
                "files as published with the model"
            ) from exc
        # Labels are checked before the (large) weights are read.
        self.label_token_ids = label_token_ids(self.tokenizer, spec.labels)
        model = tf.AutoModelForImageTextToText.from_pretrained(source, dtype=self.dtype)
        self.model = model.to(self.device).eval()
        self.image_token_id = int(config.image_token_id)
        self.merge_size = int(self.image_processor.merge_size)
        self._lock = threading.Lock()
        self._torch = torch
        #: forward passes run so far (for logs and tests)
        self.batches_scored = 0

    def _prompt_ids(self, image_tokens: int) -> list[int]:
        tok = self.tokenizer
        cfg = self.model.config
        image = tok.convert_ids_to_tokens(self.image_token_id)
        start = tok.convert_ids_to_tokens(int(cfg.vision_start_token_id))
        end = tok.convert_ids_to_tokens(int(cfg.vision_end_token_id))
        text = (
            f"<|im_start|>system\n{_SYSTEM}<|im_end|>\n<|im_start|>user\n"
            f"{start}{image * image_tokens}{end}{self.spec.prompt}<|im_end|>\n"
            "<|im_start|>assistant\n"
        )
        ids = tok(text, add_special_tokens=False)["input_ids"]
        found = sum(1 for i in ids if i == self.image_token_id)
        if found != image_tokens:
            raise ValueError(
                f"the tokenizer of {self.spec.model!r} does not keep {image!r} as one token "
                f"({found} of {image_tokens} found); the checkpoint's tokenizer does not match "
                "its model"
            )
        return ids

    def score(self, crops: list[np.ndarray], batch_size: int) -> np.ndarray:
        """(N, L) float32 label probabilities for N equal-size (H, W, 3) uint8 crops."""
        if not crops:
            return np.zeros((0, len(self.spec.labels)), dtype=np.float32)
        torch = self._torch
        out = []
        with self._lock, torch.inference_mode():
            for start in range(0, len(crops), max(1, batch_size)):
                batch = crops[start : start + max(1, batch_size)]
                feats = self.image_processor(images=batch, return_tensors="pt")
                grid = feats["image_grid_thw"]
                tokens = int(grid[0].prod()) // self.merge_size**2
                ids = torch.tensor([self._prompt_ids(tokens)] * len(batch), dtype=torch.long)
                result = self.model(
                    input_ids=ids.to(self.device),
                    attention_mask=torch.ones_like(ids).to(self.device),
                    mm_token_type_ids=(ids == self.image_token_id).long().to(self.device),
                    pixel_values=feats["pixel_values"].to(self.device, self.dtype),
                    image_grid_thw=grid.to(self.device),
                    logits_to_keep=1,
                )
                logits = result.logits[:, -1, self.label_token_ids].float()
                out.append(torch.softmax(logits, dim=-1).cpu().numpy())
                self.batches_scored += 1
        return np.concatenate(out, axis=0).astype(np.float32)


def label_token_ids(tokenizer: Any, labels: tuple[str, ...]) -> list[int]:
    """First token id of each label word as the model would start its answer; all distinct."""
    ids = []
    for word in labels:
        toks = tokenizer(word, add_special_tokens=False)["input_ids"]
        if not toks:
            raise ValueError(f"label {word!r} encodes to no token")
        ids.append(int(toks[0]))
    if len(set(ids)) != len(ids):
        firsts = {w: tokenizer.convert_ids_to_tokens(i) for w, i in zip(labels, ids, strict=True)}
        raise ValueError(
            f"VLM labels must start with distinct tokens, but their first tokens are {firsts}; "
            "the answer position can then not tell them apart; fix: reword the labels so each "
            "starts with a different word (e.g. 'haze' instead of 'thin cloud')"
        )
    return ids


def _placement(torch: Any, device: str, dtype: str) -> tuple[Any, Any]:
    """(device, dtype): CUDA in half precision when present ('auto'), else CPU float32."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"VLM device {device!r} requested but torch sees no CUDA device; fix: device='auto' "
            "or 'cpu', or install a CUDA build of torch on the GPU workers"
        )
    names = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype == "auto":
        if dev.type == "cuda":
            dt = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dt = torch.float32
    elif dtype in names:
        dt = names[dtype]
    else:
        raise ValueError(f"unknown VLM dtype {dtype!r}; valid: auto, {', '.join(names)}")
    return dev, dt
