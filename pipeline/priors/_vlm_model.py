"""Loading a Qwen VL checkpoint once per process, and scoring labels on batches of crops.

The model, its image processor and tokenizer live in a per-process cache keyed by
``ScorerSpec`` (model path/id, device, dtype, labels, prompt), so every Dask worker process
loads a checkpoint once, and the prior object that travels in the task graph holds only the
spec (a few strings). ``load_events()`` records each load (pid, key, seconds) for logs and
tests.

Scoring: every crop is resized by the caller to the same quicklook size, so all prompts have
the same number of image tokens and a batch needs no padding. A label's score is the
log-probability of its whole answer, ``label tokens + <|im_end|>``, after the prompt (teacher
forcing); a softmax over the labels' scores gives their probabilities. No generation, no
text parsing, and any tokenizer works: labels may share first tokens or be prefixes of each
other (the end-of-turn token is what tells "cloud" from "cloud shadow"), and differ in
length. Each batch of crops takes two forward passes:

1. the prompts with their images (vision tower and prompt once per crop), keeping the KV
   cache and only the last position's logits: the first answer token's distribution;
2. the label continuations of every (crop, label) pair as one batch on the prompt cache
   repeated per label: the distributions of the later answer tokens.

Pass 2 holds the prompt's KV cache once per (crop, label) row, so its memory is the prompt
cache times the number of labels; ``batch_size`` (crops per batch) bounds both passes.

The M-RoPE position ids are computed once from the prompt (``get_rope_index``) and passed
explicitly to both passes: answer tokens follow the prompt's last position, the same ids
the model gives them when it runs the whole sequence at once, and the model's stored
``rope_deltas`` state is never relied on.

Image preprocessing uses the checkpoint's own image processor with the PIL/numpy backend
(``AutoImageProcessor.from_pretrained(..., backend="pil")``), so torchvision is never needed.

torch and transformers are imported lazily (the ``vlm`` extra); a missing install says so.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._worker_cache import LoadEvent, WorkerCache

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


def _describe_scorer(spec: ScorerSpec, scorer: LabelScorer) -> str:
    return f"VLM {spec.model} ({scorer.model_type}) on {scorer.device} as {scorer.dtype}"


#: The process's loaded scorers (one per checkpoint, labels and device).
_CACHE: WorkerCache[ScorerSpec, LabelScorer] = WorkerCache(
    "checkpoint", lambda spec: LabelScorer(spec), _describe_scorer
)


def load_events() -> tuple[LoadEvent, ...]:
    """Every checkpoint load of this process (for logs, and tests of once-per-worker)."""
    return _CACHE.events()


def clear_cache() -> None:
    """Forget the loaded scorers of this process (frees their memory)."""
    _CACHE.clear()


def get_scorer(spec: ScorerSpec) -> LabelScorer:
    """The process's scorer for ``spec``, loading the checkpoint on first use (thread-safe)."""
    return _CACHE.get(spec)


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
        self.label_sequences = label_token_sequences(self.tokenizer, spec.labels)
        model = tf.AutoModelForImageTextToText.from_pretrained(source, dtype=self.dtype)
        self.model = model.to(self.device).eval()
        self.image_token_id = int(config.image_token_id)
        self.merge_size = int(self.image_processor.merge_size)
        self._lock = threading.Lock()
        self._torch = torch
        self._answers = _AnswerTensors.build(torch, self.label_sequences, self.device)
        #: crop batches scored so far (for logs and tests)
        self.batches_scored = 0
        #: forward passes run so far: two per crop batch (for logs and tests)
        self.forward_passes = 0

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
        step = max(1, batch_size)
        out = []
        with self._lock, self._torch.inference_mode():
            for start in range(0, len(crops), step):
                scores = self._answer_log_probs(crops[start : start + step])
                out.append(self._torch.softmax(scores, dim=-1).cpu().numpy())
                self.batches_scored += 1
        return np.concatenate(out, axis=0).astype(np.float32)

    def _answer_log_probs(self, batch: list[np.ndarray]) -> Any:
        """(n, L) float32 tensor: log p(label tokens + end of turn | prompt with the crop)."""
        torch = self._torch
        dev = self.device
        answers = self._answers
        feats = self.image_processor(images=batch, return_tensors="pt")
        grid = feats["image_grid_thw"].to(dev)
        tokens = int(grid[0].prod()) // self.merge_size**2
        n, nlab = len(batch), answers.first.shape[0]
        ids = torch.tensor([self._prompt_ids(tokens)] * n, dtype=torch.long, device=dev)
        mask = torch.ones_like(ids)
        image_tokens = (ids == self.image_token_id).long()
        positions, _ = self.model.model.get_rope_index(
            input_ids=ids, mm_token_type_ids=image_tokens, image_grid_thw=grid, attention_mask=mask
        )
        # Pass 1: image and prompt; the last position's logits give the first answer token.
        prompt = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            mm_token_type_ids=image_tokens,
            pixel_values=feats["pixel_values"].to(dev, self.dtype),
            image_grid_thw=grid,
            use_cache=True,
            logits_to_keep=1,
        )
        first = torch.log_softmax(prompt.logits[:, -1].float(), dim=-1)[:, answers.first]
        # Pass 2: every (crop, label) continuation at once on the prompt cache, which is
        # repeated per label (row c * L + l is crop c, label l). Text after the prompt
        # advances all three M-RoPE axes by one per token; right padding needs no mask, as
        # causal attention keeps the real tokens from seeing the padding after them.
        cache = prompt.cache
        cache.batch_repeat_interleave(nlab)
        steps = answers.inputs.shape[1]
        after = torch.arange(1, steps + 1, device=dev)
        cont_pos = (positions[:, :, -1:] + after).repeat_interleave(nlab, dim=1)
        hidden = self.model.model(
            input_ids=answers.inputs.repeat(n, 1),
            attention_mask=torch.ones(n * nlab, ids.shape[1] + steps, dtype=torch.long, device=dev),
            position_ids=cont_pos,
            cache=cache,
            use_cache=True,
        ).last_hidden_state
        # The vocabulary projection and its log-normaliser dominate a small model's cost:
        # only the real answer positions go through them, not the padding.
        valid = answers.valid.repeat(n, 1)
        logits = self.model.lm_head(hidden[valid]).float()
        picked = logits.gather(-1, answers.targets.repeat(n, 1)[valid][:, None])[:, 0]
        picked = picked - logits.logsumexp(dim=-1)
        rows = torch.arange(n * nlab, device=dev)[:, None].expand(-1, steps)[valid]
        rest = torch.zeros(n * nlab, device=dev).index_add_(0, rows, picked).view(n, nlab)
        self.forward_passes += 2
        return first + rest


@dataclass(frozen=True)
class _AnswerTensors:
    """The label answers as tensors for teacher forcing, built once per scorer.

    first (L,): each answer's first token, read from the prompt's last logits.
    inputs (L, K-1): each answer without its last token, right-padded: the continuation fed
        after the prompt (K = the longest answer's length).
    targets (L, K-1): the token each continuation position must predict (answer[1:]), padded.
    valid (L, K-1): True where ``targets`` is a real answer token, False on padding.
    """

    first: Any
    inputs: Any
    targets: Any
    valid: Any

    @classmethod
    def build(cls, torch: Any, sequences: list[list[int]], device: Any) -> _AnswerTensors:
        steps = max(len(s) for s in sequences) - 1
        pad = sequences[0][-1]  # any real token: padded positions are never read
        inputs = [s[:-1] + [pad] * (steps - len(s) + 1) for s in sequences]
        targets = [s[1:] + [pad] * (steps - len(s) + 1) for s in sequences]
        valid = [[True] * (len(s) - 1) + [False] * (steps - len(s) + 1) for s in sequences]
        return cls(
            first=torch.tensor([s[0] for s in sequences], dtype=torch.long, device=device),
            inputs=torch.tensor(inputs, dtype=torch.long, device=device),
            targets=torch.tensor(targets, dtype=torch.long, device=device),
            valid=torch.tensor(valid, dtype=torch.bool, device=device),
        )


#: The token that ends an assistant turn in Qwen's chat format; it closes every answer, so a
#: label that is a prefix of another ("cloud", "cloud shadow") is still a complete answer.
END_OF_TURN = "<|im_end|>"


def label_token_sequences(tokenizer: Any, labels: tuple[str, ...]) -> list[list[int]]:
    """Each label's answer as the model would write it: its tokens, then the end of turn.

    Labels may share tokens, start alike or differ in length; only a label that encodes to
    no token at all is refused.
    """
    end = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    if not isinstance(end, int) or end == tokenizer.unk_token_id:
        raise ValueError(
            f"the tokenizer has no {END_OF_TURN!r} token, so it is not a Qwen chat tokenizer; "
            "fix: use the tokenizer files published with the Qwen VL checkpoint"
        )
    sequences = []
    for word in labels:
        toks = [int(t) for t in tokenizer(word, add_special_tokens=False)["input_ids"]]
        if not toks:
            raise ValueError(
                f"VLM label {word!r} encodes to no token, so the model cannot answer it; "
                "fix: give every label at least one visible word (e.g. 'thin cloud')"
            )
        sequences.append(toks + [end])
    return sequences


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
