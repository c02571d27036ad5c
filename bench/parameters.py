"""Parameters of the MMBM presets by part, and which tasks read each part.

    python -m bench.parameters --summary   # the table in docs/model.md (bench.model_latency prints it too)

Owns ``PART_TASKS`` (which tasks read each top-level part of an ``MMBM``; a part
read by two or more is "shared"), ``parameter_counts``, ``shared_fraction`` and
``summary_table``: reporting about the model, kept out of mmbm/model/model.py so
that file reads as the model alone. Used by the benchmarks and by
tests/test_model.py, which states the shared fraction.
"""

from __future__ import annotations

import argparse

import torch

from mmbm.config import ModelConfig
from mmbm.model.model import MMBM

# Which tasks read each top-level part; a part read by two or more tasks is "shared".
PART_TASKS: dict[str, tuple[str, ...]] = {
    "backbone": ("caption", "retrieval", "speech"),
    "image_stem": ("caption", "retrieval"),
    "text_stem": ("caption", "retrieval"),
    "audio_stem": ("speech",),
    "fusion": ("caption",),
    "caption_output": ("caption",),  # absent when tied to the text embedding
    "retrieval": ("retrieval",),
    "ctc_head": ("speech",),
}


def parameter_counts(model: MMBM) -> dict[str, int]:
    """Parameters per top-level part (PART_TASKS order); tied weights count once."""
    counts = {name: 0 for name in PART_TASKS}
    for name, module in model.named_children():
        counts[name] = sum(p.numel() for p in module.parameters())
    return counts


def shared_fraction(model: MMBM) -> float:
    """Fraction of parameters in parts read by two or more tasks (see PART_TASKS)."""
    counts = parameter_counts(model)
    shared = sum(n for name, n in counts.items() if len(PART_TASKS[name]) > 1)
    return shared / sum(counts.values())


def summary_table(configs: dict[str, ModelConfig]) -> str:
    """Markdown table of parameter counts by part for each named config (built on the meta device)."""
    columns = {}
    for label, config in configs.items():
        with torch.device("meta"):
            model = MMBM(config)
        columns[label] = (parameter_counts(model), shared_fraction(model))
    lines = ["| part | tasks | " + " | ".join(columns) + " |", "|---|---|" + "---:|" * len(columns)]
    for part, tasks in PART_TASKS.items():
        cells = " | ".join(f"{counts[part]:,}" for counts, _ in columns.values())
        lines.append(f"| {part} | {', '.join(tasks)} | {cells} |")
    lines.append("| **total** | | " + " | ".join(f"{sum(c.values()):,}" for c, _ in columns.values()) + " |")
    lines.append("| shared fraction | | " + " | ".join(f"{f:.1%}" for _, f in columns.values()) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="Describe the MMBM presets.")
    parser.add_argument("--summary", action="store_true", help="print parameter counts by part for tiny and base")
    args = parser.parse_args()
    if args.summary:
        presets = {"tiny": ModelConfig.tiny(), "base": ModelConfig.base()}
        for fusion in ("concat", "multiply"):
            presets[f"tiny ({fusion})"] = ModelConfig.tiny(fusion=fusion)
        print(summary_table(presets))
    else:
        parser.print_help()


if __name__ == "__main__":
    main()
