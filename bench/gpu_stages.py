"""Where minilm's time goes on a GPU, stage by stage, per dtype: why fp16/bf16 measured slower than
fp32 at batch 256 on an H200 (bench/results/gpu_check-h200.json).

Stages of one ``models.minilm`` call: tokenising (CPU, tokenizers), building the index tensors
(CPU), host->device copies, the forward pass, pooling and the device->host copy. GPU stages are
timed with CUDA events, CPU stages with perf_counter; each figure is the median of the repeats.
Writes $OUT/gpu_stages.json. Usage: python bench/gpu_stages.py [--batch 256] [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.gpu_check import corpus
from models.ops import load_tokenizer
from models.weights import minilm_dir

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    device = torch.device("cuda:0")
    tokenizer = load_tokenizer()
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    texts = corpus(args.batch)
    report: dict[str, Any] = {"gpu": torch.cuda.get_device_name(0), "batch": args.batch,
                              "torch": torch.__version__, "ms": {}}
    for name, dtype in DTYPES.items():
        model = AutoModel.from_pretrained(str(minilm_dir()), dtype=dtype).to(device).eval()
        stages: dict[str, list[float]] = {k: [] for k in
                                          ("tokenize", "tensors", "h2d", "forward", "pool_d2h")}
        with torch.inference_mode():
            for repeat in range(args.repeats + 3):
                t0 = time.perf_counter()
                encodings = tokenizer.encode_batch(texts)
                t1 = time.perf_counter()
                batch = {
                    "input_ids": torch.tensor([e.ids for e in encodings], dtype=torch.long),
                    "attention_mask": torch.tensor([e.attention_mask for e in encodings],
                                                   dtype=torch.long),
                    "token_type_ids": torch.tensor([e.type_ids for e in encodings],
                                                   dtype=torch.long),
                }
                t2 = time.perf_counter()
                events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
                events[0].record()
                on_device = {k: v.pin_memory().to(device, non_blocking=True)
                             for k, v in batch.items()}
                events[1].record()
                hidden = model(**on_device).last_hidden_state.float()
                events[2].record()
                mask = on_device["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                torch.nn.functional.normalize(pooled, p=2, dim=1).cpu().numpy()
                events[3].record()
                torch.cuda.synchronize()
                if repeat < 3:
                    continue  # warm-up
                stages["tokenize"].append((t1 - t0) * 1000)
                stages["tensors"].append((t2 - t1) * 1000)
                stages["h2d"].append(events[0].elapsed_time(events[1]))
                stages["forward"].append(events[1].elapsed_time(events[2]))
                stages["pool_d2h"].append(events[2].elapsed_time(events[3]))
        report["ms"][name] = {k: round(statistics.median(v), 3) for k, v in stages.items()}
        report["ms"][name]["total"] = round(sum(report["ms"][name].values()), 3)
        report["ms"][name]["sentences_per_s"] = round(
            args.batch / report["ms"][name]["total"] * 1000, 1)
        del model
        torch.cuda.empty_cache()
    out = Path(os.environ.get("OUT", ".")) / "gpu_stages.json"
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
