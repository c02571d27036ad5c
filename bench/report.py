"""docs/benchmarks.md and its plots, written from scratch from the results of bench.run_all.

Owns the tables (markdown), the ratios and verdicts against the issue's targets,
and the PNG plots (matplotlib, Agg). Reads only the results dict that
bench.run_all assembles; computes nothing that needs a model.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from bench.ablation import FUSION_RUNS, REWEIGHTED_RUN, SINGLE_TASK_RUNS  # noqa: E402
from bench.speech_peers import MMBM_GREEDY, MMBM_LEXICON, PS_GENERAL, PS_GRAMMAR  # noqa: E402
from mmbm.files import write_text_atomic  # noqa: E402
from mmbm.training.train_config import TASKS  # noqa: E402

TOLERANCE = 0.05  # "within 5% of the best single-task model"
TABLES = ("Headline", "Speech", "Captioning", "Fusion ablation", "Shared versus separate")


def _n(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b (1 when both are 0, inf when only b is), or None when either is missing."""
    if a is None or b is None:
        return None
    if b == 0:
        return 1.0 if a == 0 else math.inf
    return a / b


def relative_change(value: float | None, reference: float | None, higher_is_better: bool) -> float | None:
    """(value - reference) / reference, signed so that + means ``value`` is better; None when either is missing."""
    if value is None or reference is None:
        return None
    if value == reference:
        return 0.0
    better = (value > reference) == higher_is_better
    if reference == 0:
        return math.inf if better else -math.inf
    return abs(value - reference) / abs(reference) * (1 if better else -1)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def _provenance(meta: dict[str, Any], command: str, budget: str) -> str:
    return f"_Command:_ `{command}`; _seed_ {meta['seed']}; _budget_ {budget}; _hardware_ {meta['hardware']}."


# ----- speech --------------------------------------------------------------------------


def speech_section(results: dict[str, Any], assets: Path, prefix: str) -> list[str]:
    meta, speech = results["meta"], results["speech"]
    lines = ["## Speech: MMBM and pocketsphinx on the same clips", "",
             f"Model `{speech['model']}`; pocketsphinx 5.1.1 with its shipped en-us model, once as is and once held to "
             "the ShapesWorld JSGF grammar (`python -m bench.speech_peers --print-grammar`). MMBM decodes greedily and "
             f"with its {speech['beam_size']}-prefix beam held to the {speech['lexicon_words']} words ShapesWorld "
             f"says (the demo's and the evaluator's lexicon). Noise: white, {speech['snr_db']:g} dB SNR, seeded per clip exactly as "
             f"mmbm.evaluate does. RTF: median over the clips of wall time from the audio source to text / audio "
             f"seconds, every system in turn on each clip, {speech['threads']} torch thread(s).", ""]
    rows = []
    for name, entry in speech["sets"].items():
        for system, m in entry["systems"].items():
            r = m["rates"]
            rows.append([name, str(entry["n_clips"]), system, _pct(r["wer"]), _pct(r["cer"]), _pct(r["word_accuracy"]),
                         _n(m["rtf_median"]), str(m["n_refused"])])
    lines += _table(["set", "clips", "system", "WER", "CER", "word accuracy", "RTF (median)", "refused"], rows)
    lines += ["", _provenance(meta, meta["speech_command"],
                                    f"{'every' if speech['limit'] is None else speech['limit']} clip(s) per set"), "",
              "MMBM's ratio to each pocketsphinx form (below 1: MMBM is better / faster):", ""]
    rows = []
    for name, entry in speech["sets"].items():
        s = entry["systems"]
        for mmbm in (MMBM_LEXICON, MMBM_GREEDY):
            rows.append([name, mmbm] + [_n(ratio(s[mmbm]["rates"][key], s[ps]["rates"][key]), 2)
                                        for key in ("wer", "cer") for ps in (PS_GENERAL, PS_GRAMMAR)]
                        + [_n(ratio(s[mmbm]["rtf_median"], s[ps]["rtf_median"]), 2) for ps in (PS_GENERAL, PS_GRAMMAR)])
    lines += _table(["set", "MMBM decoding", "WER / general", "WER / grammar", "CER / general", "CER / grammar",
                     "RTF / general", "RTF / grammar"], rows)
    speakers = [(name, entry) for name, entry in speech["sets"].items()
                if any(m["per_speaker"] for m in entry["systems"].values())]
    for name, entry in speakers:
        lines += ["", f"Per speaker, {name} (WER):", ""]
        systems = list(entry["systems"])
        names = sorted(next(iter(entry["systems"].values()))["per_speaker"])
        lines += _table(["speaker", *systems], [[spk, *(_pct(entry["systems"][s]["per_speaker"][spk]["wer"])
                                                        for s in systems)] for spk in names])
    lines += ["", f"![WER by set and system]({prefix}bench-speech-wer.png)"]
    _bar_plot(assets / "bench-speech-wer.png", list(speech["sets"]),
              {system: [entry["systems"][system]["rates"]["wer"] for entry in speech["sets"].values()]
               for system in (MMBM_GREEDY, MMBM_LEXICON, PS_GENERAL, PS_GRAMMAR)}, "WER (lower is better)")
    return lines


# ----- captions ------------------------------------------------------------------------


def _caption_rows(systems: dict[str, Any], split: str, training: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows = []
    for name, system in systems.items():
        m = system["splits"].get(split)
        if m is None:
            continue
        t = training.get(name, {})
        rows.append([name, f"{system['n_parameters']:,}", str(t.get("steps", "n/a")),
                     _n(t["seconds"] / 60, 1) if "seconds" in t else "n/a", _n(m["faithful"]), _n(m["complete"]),
                     _n(m["unparseable"]), _n(m["bleu4"]), _n(m["cider"]), _n(system["latency_ms"]["median"], 1)])
    return rows


CAPTION_HEADER = ["system", "parameters", "train steps", "train min", "faithful", "complete", "unparseable",
                  "BLEU-4", "CIDEr", "latency ms (median)"]


def caption_section(results: dict[str, Any], assets: Path, prefix: str) -> list[str]:
    meta, captions, training = results["meta"], results["captions"], results["caption_training"]
    lstm, mmbm = results["caption_names"]["lstm"], results["caption_names"]["mmbm"]
    systems = {k: v for k, v in captions["systems"].items() if k not in results["caption_names"]["fusions"].values()
               or k == mmbm}
    lines = ["## Captioning: the seed's LSTM captioner and MMBM at the same wall clock", "",
             f"`{lstm}`: bench/lstm_captioner.py, init-state style (CNN from scratch -> pooled 4x4 grid -> "
             f"dense -> LSTM initial state), cross-entropy, Adam {results['lstm']['lr']:g}, batch "
             f"{results['lstm']['batch_size']}, no augmentation, trained for the "
             f"wall-clock minutes that `{mmbm}` (MMBM trained on captioning alone) took. Those minutes include "
             "MMBM's setup (reading the corpora, training its tokenizer) and its validations, while the LSTM "
             "spends them all on training steps: the budget leans towards the LSTM. "
             "Greedy decoding for every system; latency is one caption from the image file, systems in turn, "
             f"median of {captions['repeats']} after a warm-up.", ""]
    for split in ("test", "compositional"):
        lines += [f"**{split} split**", ""] + _table(CAPTION_HEADER, _caption_rows(systems, split, training)) + [""]
    lines.append(_provenance(meta, meta["caption_command"], f"{meta['steps']} steps for MMBM, the same minutes for "
                                                               f"the LSTM; {captions['limit'] or 'all'} images/split"))
    lines += ["", f"Ratios {mmbm} / {lstm}:", ""]
    rows = []
    for split in ("test", "compositional"):
        a, b = systems[mmbm]["splits"].get(split), systems[lstm]["splits"].get(split)
        if a and b:
            rows.append([split, *(_n(ratio(a[k], b[k]), 2) for k in ("faithful", "complete", "bleu4", "cider")),
                         _n(ratio(systems[mmbm]["latency_ms"]["median"], systems[lstm]["latency_ms"]["median"]), 2)])
    lines += _table(["split", "faithful", "complete", "BLEU-4", "CIDEr", "latency"], rows)
    lines += ["", f"![caption quality]({prefix}bench-captions.png)"]
    names = list(systems)
    _bar_plot(assets / "bench-captions.png", ["faithful", "complete", "CIDEr"],
              {n: [systems[n]["splits"]["test"][k] for k in ("faithful", "complete", "cider")] for n in names
               if "test" in systems[n]["splits"]}, "test split (higher is better)")
    return lines


def fusion_section(results: dict[str, Any], assets: Path, prefix: str) -> list[str]:
    meta, captions, training = results["meta"], results["captions"], results["caption_training"]
    fusions = results["caption_names"]["fusions"]
    systems = {name: captions["systems"][name] for name in fusions.values() if name in captions["systems"]}
    lines = ["## Fusion ablation: attention, concat, multiply", "",
             "Captioning alone (no retrieval or speech gradients, so only the fusion differs), the same seed, "
             "batches, schedule and number of steps. attention: [image | text] through the backbone under a "
             "prefix-LM mask; concat / multiply: a pooled image vector mixed into every text embedding.", ""]
    for split in ("test", "compositional"):
        lines += [f"**{split} split**", ""] + _table(CAPTION_HEADER, _caption_rows(systems, split, training)) + [""]
    lines.append(_provenance(meta, results["trainings"][FUSION_RUNS["concat"]]["run"]["command"],
                             f"{meta['steps']} steps each (commands differ only in --fusion)"))
    curves = {fusion: results["validation_curves"].get(run, []) for fusion, run in FUSION_RUNS.items()}
    if any(curves.values()):
        _curve_plot(assets / "bench-fusion.png", curves, "validation caption token accuracy")
        lines += ["", f"![validation curves]({prefix}bench-fusion.png)"]
    return lines


# ----- shared versus separate -----------------------------------------------------------


def task_metrics(metrics: dict[str, Any], task: str) -> dict[str, tuple[float | None, bool]]:
    """{label: (value, higher_is_better)} of one task from an mmbm.evaluate metrics dict."""
    out: dict[str, tuple[float | None, bool]] = {}
    if task == "caption" and "captions" in metrics:
        for split, m in metrics["captions"]["splits"].items():
            for key in ("faithful", "complete", "bleu4", "cider"):
                out[f"{split} {key}"] = (m[key], True)
    if task == "retrieval" and "retrieval" in metrics:
        r = metrics["retrieval"]
        for direction in ("text_to_image", "image_to_text"):
            for k, value in r[direction].items():
                out[f"{direction.replace('_to_', '→')} {k.replace('recall', 'R')}"] = (value, True)
        for k, value in r["semantic_precision"].items():
            out[f"semantic {k.replace('precision', 'P')}"] = (value, True)
    if task == "speech" and "speech" in metrics:
        for name, entry in metrics["speech"]["sets"].items():
            for method, m in entry["methods"].items():
                out[f"{name} WER ({method})"] = (m["rates"]["wer"], False)
                out[f"{name} CER ({method})"] = (m["rates"]["cer"], False)
    return out


def shared_comparison(trainings: dict[str, Any], shared_run: str = "shared") -> list[dict[str, Any]]:
    """One row per task metric: shared vs single-task value and the shared model's relative change (+ = better)."""
    shared = trainings[shared_run]["metrics"]
    rows = []
    for task, run in SINGLE_TASK_RUNS.items():
        single = task_metrics(trainings[run]["metrics"], task)
        for label, (value, higher) in task_metrics(shared, task).items():
            other = single.get(label, (None, higher))[0]
            change = relative_change(value, other, higher)
            rows.append({"task": task, "metric": label, "shared": value, "single": other, "higher_is_better": higher,
                         "change": change, "within": None if change is None else change >= -TOLERANCE})
    return rows


def shared_section(results: dict[str, Any], assets: Path, prefix: str) -> list[str]:
    meta, trainings = results["meta"], results["trainings"]
    rows = shared_comparison(trainings)
    lines = ["## Shared versus separate: one backbone for three tasks, or one model per task", "",
             "Each single-task model is the same architecture trained with the other two task weights at 0 (those "
             "tasks do no forward pass), with the same seed, batches and number of optimizer steps as the shared "
             "model: every task sees exactly the same examples. Change = the shared model's relative difference "
             "from the single-task model, signed so that + means the shared model is better (transfer) and - "
             f"worse (interference); within = no worse than {TOLERANCE:.0%}.", ""]
    lines += _table(["task", "metric", "shared", "single-task", "change", f"within {TOLERANCE:.0%}"],
                    [[r["task"], r["metric"], _n(r["shared"]), _n(r["single"]),
                      "n/a" if r["change"] is None else f"{100 * r['change']:+.1f}%",
                      {None: "n/a", True: "yes", False: "no"}[r["within"]]]
                     for r in rows])
    lines += ["", _provenance(meta, trainings["shared"]["run"]["command"],
                              f"{meta['steps']} steps per model; single-task commands set the other weights to 0"),
              "", "Size, memory and training time:", ""]
    size_rows, single_total = [], 0
    for name in ("shared", *SINGLE_TASK_RUNS.values()):
        run = trainings[name]["run"]
        # the shared model reads all of itself; a single-task model only the parts its task reads
        used = run["parameters"]["total"] if name == "shared" else run["parameters"]["tasks"][run["tasks"][0]]
        if name != "shared":
            single_total += used
        size_rows.append([name, ", ".join(run["tasks"]), f"{run['parameters']['total']:,}", f"{used:,}",
                          _n(used * 4 / 1e6, 1), _n(run["peak_rss_mb"], 0), _n(run["train_seconds"] / 60, 1),
                          str(run["steps"])])
    lines += _table(["model", "tasks", "parameters (file)", "parameters its tasks read", "weights MB (fp32)",
                     "peak training RSS MB", "train min", "steps"], size_rows)
    shared_params = trainings["shared"]["run"]["parameters"]["total"]
    lines += ["", "Same commands, seed, budget and hardware as the table above; peak RSS is the whole training "
                  "process's (`ru_maxrss` of the child), torch and the cached corpora included.",
              "", f"The three single-task models together need {single_total:,} parameters; the shared model "
                  f"{shared_params:,} ({_pct(ratio(shared_params, single_total))} of them)."]
    _change_plot(assets / "bench-shared.png", rows)
    lines += ["", f"![shared vs single-task]({prefix}bench-shared.png)"]
    return lines + gradient_section(results)


def gradient_section(results: dict[str, Any]) -> list[str]:
    """Why sharing costs a task: bench.task_gradients at each point, then the reweighted shared model."""
    gradients, trainings = results.get("gradients"), results["trainings"]
    if not gradients or REWEIGHTED_RUN not in trainings:
        return []
    weights = trainings[REWEIGHTED_RUN]["run"]["weights"]
    lines = ["", "### Why: each task's gradient on the shared weights", "",
             "Each task's loss alone, backpropagated through the model on the same fixed training batches "
             f"({gradients['batches']} batches of {gradients['batch_size']} pairs and "
             f"{gradients['speech_batch_size']} clips, no augmentation), scaled by the run's task weight. Norm: "
             "median over the batches. Cosine: median between two tasks' gradients (near 0: they neither help nor "
             "fight). Adam share: per weight, the task's mean squared gradient over the sum of all tasks' — the "
             "part of Adam's denominator it owns. Every task's step on a shared weight is divided by that "
             "denominator, so a task with a small share moves the shared weights slowly however much its own "
             "loss would gain.", ""]
    rows = []
    for label, point in gradients["points"].items():
        for part in ("backbone", "image_stem", "text_stem"):
            e = point["summary"].get(part)
            if e is None:
                continue
            rows.append([label, part, " / ".join(_n(e["norm"].get(t), 3) for t in TASKS),
                         ", ".join(f"{k} {v:+.2f}" for k, v in e.get("cosine", {}).items()),
                         ", ".join(f"{k} {v:.2f}" for k, v in e.get("adam_share", {}).items())])
    lines += _table(["model", "part", "grad norm caption / retrieval / speech", "cosine", "Adam share"], rows)
    lines += ["", f"_Command:_ `{gradients['command']}`.", "",
              f"The test of that reading: `{REWEIGHTED_RUN}`, the shared model with task weights "
              f"{' / '.join(f'{w:g}' for w in weights)} (caption / contrastive / CTC), the same seed, batches and "
              "steps. Change against the single-task models, and against the shared model:", ""]
    base = {(r["task"], r["metric"]): r for r in shared_comparison(trainings)}
    rows = []
    for r in shared_comparison(trainings, REWEIGHTED_RUN):
        b = base.get((r["task"], r["metric"]), {})
        vs_shared = relative_change(r["shared"], b.get("shared"), r["higher_is_better"])
        rows.append([r["task"], r["metric"], _n(b.get("shared")), _n(r["shared"]), _n(r["single"]),
                     "n/a" if r["change"] is None else f"{100 * r['change']:+.1f}%",
                     "n/a" if vs_shared is None else f"{100 * vs_shared:+.1f}%"])
    lines += _table(["task", "metric", "shared", REWEIGHTED_RUN, "single-task", "vs single-task", "vs shared"], rows)
    lines += ["", _provenance(results["meta"], trainings[REWEIGHTED_RUN]["run"]["command"],
                              f"{results['meta']['steps']} steps")]
    return lines


# ----- plots and the whole page --------------------------------------------------------


def _bar_plot(path: Path, groups: list[str], series: dict[str, list[float | None]], ylabel: str) -> None:
    figure, axes = plt.subplots(figsize=(max(6, 1.6 * len(groups)), 3.6))
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series.items()):
        axes.bar([g + i * width for g in range(len(groups))], [v if v is not None else 0 for v in values], width,
                 label=label)
    axes.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], groups, fontsize=8)
    axes.set_ylabel(ylabel)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _curve_plot(path: Path, curves: dict[str, list[tuple[int, float]]], ylabel: str) -> None:
    figure, axes = plt.subplots(figsize=(6, 3.4))
    for label, points in curves.items():
        if points:
            axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    axes.set_xlabel("step")
    axes.set_ylabel(ylabel)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _change_plot(path: Path, rows: list[dict[str, Any]]) -> None:
    shown = [r for r in rows if r["change"] is not None and math.isfinite(r["change"])]
    figure, axes = plt.subplots(figsize=(7, max(3, 0.22 * len(shown))))
    # a change from a near-zero reference (e.g. complete 0.004 vs 0.001 = +300%) would squash every other bar
    axes.barh([f"{r['task']}: {r['metric']}" for r in shown], [max(-100.0, min(100.0, 100 * r["change"])) for r in shown],
              color=["tab:green" if r["change"] >= 0 else "tab:red" for r in shown])
    axes.axvline(-100 * TOLERANCE, color="grey", linestyle="--", linewidth=1)
    axes.set_xlabel("shared vs single-task, % (+ better; bars cut at ±100%)")
    axes.tick_params(axis="y", labelsize=6)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def headline(results: dict[str, Any]) -> list[str]:
    """The issue's targets, each with its measured ratio and whether it is met."""
    lines = ["## Headline", ""]
    sets = results["speech"]["sets"]
    for name in [n for n in sets if n.startswith("heldout")]:
        s = sets[name]["systems"]
        wer = ratio(s[MMBM_LEXICON]["rates"]["wer"], s[PS_GRAMMAR]["rates"]["wer"])
        rtf = ratio(s[MMBM_LEXICON]["rtf_median"], s[PS_GRAMMAR]["rtf_median"])
        met = wer is not None and rtf is not None and wer < 1 and rtf < 1
        lines.append(f"- Speech, {name}: MMBM (beam+lexicon) / pocketsphinx-with-grammar WER ratio **{_n(wer, 2)}**, "
                     f"RTF ratio **{_n(rtf, 2)}** — target (both < 1) {'met' if met else 'not met'}.")
    names, systems = results["caption_names"], results["captions"]["systems"]
    a, b = systems[names["mmbm"]]["splits"]["test"], systems[names["lstm"]]["splits"]["test"]
    met = a["faithful"] > b["faithful"] and a["cider"] > b["cider"]
    lines.append(f"- Captioning at equal wall clock (test split): MMBM / LSTM faithful ratio "
                 f"**{_n(ratio(a['faithful'], b['faithful']), 2)}**, CIDEr ratio **{_n(ratio(a['cider'], b['cider']), 2)}**"
                 f" — target (MMBM better on both) {'met' if met else 'not met'}.")
    trainings = results["trainings"]
    singles = sum(trainings[run]["run"]["parameters"]["tasks"][task] for task, run in SINGLE_TASK_RUNS.items())
    for shared_run in ("shared", REWEIGHTED_RUN):
        if shared_run not in trainings:
            continue
        rows = shared_comparison(trainings, shared_run)
        worst = min((r for r in rows if r["change"] is not None), key=lambda r: r["change"], default=None)
        params = trainings[shared_run]["run"]["parameters"]["total"]
        judged = [r for r in rows if r["within"] is not None]
        within = all(r["within"] for r in judged)
        weights = " / ".join(f"{w:g}" for w in trainings[shared_run]["run"]["weights"])
        if worst is not None:
            lines.append(f"- Shared (`{shared_run}`, task weights {weights}) vs single-task: "
                         f"{sum(r['within'] for r in judged)} of {len(judged)} task metrics within {TOLERANCE:.0%}; "
                         f"the largest loss is {worst['task']} {worst['metric']} ({100 * worst['change']:+.1f}%). "
                         f"Parameters: shared / sum of single-task **{_n(ratio(params, singles), 2)}** — target (all "
                         f"within 5% and < 0.5) {'met' if within and params < singles / 2 else 'not met'}.")
    return lines


def write_report(results: dict[str, Any], path: Path, assets: Path) -> Path:
    """Write the markdown page (every table) and its plots; returns ``path``."""
    assets.mkdir(parents=True, exist_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = Path(os.path.relpath(assets, path.parent)).as_posix() + "/"
    meta = results["meta"]
    lines = ["# Benchmarks: MMBM beside its peers", "",
             f"Generated by `{meta['command']}` on {meta['date']} (that invocation: {_n(meta['seconds'] / 60, 1)} "
             "min; stages finished by earlier invocations are read back, not rerun). `make bench` regenerates this "
             f"page and its plots from scratch. Hardware: {meta['hardware']}. "
             f"{'QUICK MODE: smoke-test budgets, the numbers mean nothing. ' if meta['quick'] else ''}"
             "Every timing is a median; the systems of one table were timed side by side in one process run.", ""]
    lines += headline(results) + [""]
    lines += speech_section(results, assets, prefix) + [""]
    lines += caption_section(results, assets, prefix) + [""]
    lines += fusion_section(results, assets, prefix) + [""]
    lines += shared_section(results, assets, prefix) + [""]
    write_text_atomic(path, "\n".join(lines))
    return path
