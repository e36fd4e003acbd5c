"""all-MiniLM-L6-v2 sentence embeddings: mean pooling over the last hidden state, L2-normalised.

The same computation as sentence-transformers' pipeline for this model, without its import cost.
On one padded batch both do the same operators in the same time (profiled side by side); what
differs is how a batch is cut: on a CPU this runner sorts a batch by token count and runs it as
sub-batches (``CPU_SUB_BATCH``), each padded only to its own longest input.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import AutoModel

from models.ops import load_tokenizer
from models.registry import LoadContext, Runner
from models.torch_runtime import prepare, to_device
from models.weights import minilm_dir

DIMENSION = 384
#: On a CPU, a batch runs as forwards of at most this many inputs, sorted by token count first.
#: Callers that sort by characters (sentence-transformers' ``encode``; the gpu worker sorts a
#: flush by ``lengths``, in tokens) use a poor proxy for tokens on short sentences: one forward
#: over a length-sorted batch of 64-128 of the bench's sentences computes 19-21% padding,
#: sub-batches of 32 sorted by tokens 5-9%, and their smaller activations stay in cache.
#: Measured on 2 cores, against one forward over the same batch: +9-17% at batch 64, +18-46% at
#: batch 128, with one torch thread or two (16 was no better with one thread, worse with two).
CPU_SUB_BATCH = 32
#: On a GPU, pad to a multiple of 16 tokens: far fewer distinct shapes, so fp16/bf16 kernels are
#: chosen once per shape instead of on most batches (measured on an H200, fp16 at batch 256:
#: 6,300 sentences/s over varied lengths vs 16,000/s on a repeated shape), and tensor cores get
#: aligned sizes. One forward per batch there: a GPU wants the batch whole.
GPU_PAD_MULTIPLE = 16
#: Token ids counted by ``lengths`` and kept for the run, at most (a few flushes' worth).
KEPT_IDS = 8192


def load(context: LoadContext) -> Runner:
    """Load weights from the bundled package onto the context's device."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device, dtype = prepare(context)
    model = AutoModel.from_pretrained(str(minilm_dir()), dtype=dtype).to(device).eval()
    tokenizer = load_tokenizer()  # truncates at 256 tokens, never pads: _pad does, per forward
    on_gpu = device.type == "cuda"
    multiple = GPU_PAD_MULTIPLE if on_gpu else 1

    def forward(rows: list[list[int]]) -> np.ndarray:
        input_ids, attention_mask = _pad(rows, multiple)
        batch = to_device({"input_ids": input_ids, "attention_mask": attention_mask,
                           # one sentence per input: every token is of segment 0
                           "token_type_ids": torch.zeros_like(input_ids)}, device)
        hidden = model(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1).cpu().numpy()

    return _MiniLM(tokenizer, forward, on_gpu)


class _MiniLM:
    """The runner: a batch's embeddings, and (``models.registry.MeasuresInputs``) its inputs'
    lengths in tokens, for the worker to sort a flush by. Counting tokens means tokenizing, so
    the ids are kept from the count to the run (by text, popped when used) and each input is
    tokenized once. Thread-safe: calls side by side only pop and set keys of one dict."""

    def __init__(self, tokenizer: Tokenizer, forward: Callable[[list[list[int]]], np.ndarray],
                 on_gpu: bool) -> None:
        self._tokenizer = tokenizer
        self._forward = forward
        self._on_gpu = on_gpu
        self._ids: dict[str, list[int]] = {}  # text -> its token ids, counted and not yet run

    def lengths(self, inputs: Sequence[Any]) -> list[int]:
        """Each input's length in tokens (with [CLS]/[SEP], truncated as the run truncates)."""
        texts = list(inputs)
        rows = [encoding.ids for encoding in self._tokenizer.encode_batch(texts)]
        if len(self._ids) > KEPT_IDS:  # counted and never run (a flush that failed first)
            self._ids.clear()
        self._ids.update(zip(texts, rows, strict=True))
        return [len(row) for row in rows]

    @torch.inference_mode()
    def __call__(self, inputs: Sequence[Any], params: dict[str, Any]) -> list[Any]:
        rows = self._rows(list(inputs))
        if not rows:
            return []
        if self._on_gpu or len(rows) <= CPU_SUB_BATCH:
            return list(self._forward(rows))
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        outputs: list[Any] = [None] * len(rows)
        for start in range(0, len(order), CPU_SUB_BATCH):
            part = order[start : start + CPU_SUB_BATCH]
            for index, vector in zip(part, self._forward([rows[i] for i in part]), strict=True):
                outputs[index] = vector
        return outputs

    def _rows(self, texts: list[Any]) -> list[list[int]]:
        """Token ids of each text: those ``lengths`` counted, the others tokenized now."""
        kept = [self._ids.pop(text, None) if isinstance(text, str) else None for text in texts]
        missing = [i for i, row in enumerate(kept) if row is None]
        if missing:
            encoded = self._tokenizer.encode_batch([texts[i] for i in missing])
            for i, encoding in zip(missing, encoded, strict=True):
                kept[i] = encoding.ids
        return [row for row in kept if row is not None]


def _pad(rows: list[list[int]], multiple: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids padded with 0 to the longest row (rounded up to ``multiple``), and the attention
    mask. Filled in numpy, not by torch.tensor() on nested lists: that is 2.5x slower (2.6 ms vs
    1 ms at batch 256), a third of the forward pass's own time on a GPU."""
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    width = -(-int(lengths.max()) // multiple) * multiple
    ids = np.zeros((len(rows), width), dtype=np.int64)
    for row, tokens in zip(ids, rows, strict=True):
        row[: len(tokens)] = tokens
    mask = (np.arange(width) < lengths[:, None]).astype(np.int64)
    return torch.from_numpy(ids), torch.from_numpy(mask)
