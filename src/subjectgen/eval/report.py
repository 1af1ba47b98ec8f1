"""Merge a bench folder's finished pairs into results.json, table.md, plots and report.html.

`subjectgen report DIR` runs this alone, so tables and pages can be rebuilt (or rebuilt after more
pairs finish) without generating anything.
"""

from __future__ import annotations

import html
import json
import platform
import warnings
from pathlib import Path

from ..errors import UserError
from ..methods import registry
from ..training.outdir import hold, release
from ..safeio import atomic_write_bytes, atomic_write_json
from .plots import bar_chart, scatter_plot

METRICS = ("dino", "clip_i", "clip_t")
FIRST = ("oracle", "baseline", "perfect")  # then the methods in the registry's order
REFERENCES = FIRST  # rows that are not methods a user trains
GAIN_CLIP = (-1.0, 2.0)  # a per-subject gain is clipped to this: it explodes where the perfect render is barely
                         # closer to the photos than the baseline


def collect(out: Path) -> dict[str, dict[str, dict]]:
    """method -> subject -> the pair's scores.json, for every finished pair."""
    pairs: dict[str, dict[str, dict]] = {}
    for done in sorted((out / "pairs").glob("*/*/scores.json")):
        pairs.setdefault(done.parent.parent.name, {})[done.parent.name] = json.loads(done.read_text())
    order = [*FIRST, *registry.names()]
    return dict(sorted(pairs.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))


def summarize(method: str, subjects: dict[str, dict]) -> dict:
    """Mean over subjects of each subject's mean (DreamBench's averaging), and the per-image mean."""
    metrics = ("dino", "clip_i") if method == "oracle" else METRICS
    rows = [s for s in subjects.values() if s.get("dino") is not None]
    summary = {"subjects": len(subjects)}
    for m in metrics:
        summary[m] = sum(s[m] for s in rows) / len(rows) if rows else None
        images = [v for s in rows for p in s.get("prompts", []) for v in p["per_image"][m]]
        if images:
            summary[f"{m}_per_image"] = sum(images) / len(images)
    if method != "oracle" and rows:
        summary["train_seconds_per_subject"] = sum(s["train_seconds"] for s in rows) / len(rows)
        summary["generate_seconds_per_subject"] = sum(s["generate_seconds"] for s in rows) / len(rows)
    return summary


def gain(dino: float, baseline: float, perfect: float) -> float | None:
    """The share of the reachable likeness a method gets: 0 is the baseline's DINO, 1 the perfect render's."""
    return None if perfect == baseline else (dino - baseline) / (perfect - baseline)


def add_gains(summary: dict, pairs: dict) -> None:
    """Each method's gain score (on the means over subjects; and the mean of per-subject gains, each clipped to
    GAIN_CLIP) and its CLIP-T against the baseline's, where the bench has baseline and perfect rows."""
    base, perfect = summary.get("baseline", {}), summary.get("perfect", {})
    for method, s in summary.items():
        if method in ("oracle", "baseline") or base.get("clip_t") is None or s.get("clip_t") is None:
            continue
        s["clip_t_vs_baseline"] = s["clip_t"] / base["clip_t"] - 1
        if method == "perfect" or perfect.get("dino") is None:
            continue
        s["gain"] = gain(s["dino"], base["dino"], perfect["dino"])
        per_subject = [gain(p["dino"], pairs["baseline"][n]["dino"], pairs["perfect"][n]["dino"])
                       for n, p in pairs[method].items() if n in pairs["baseline"] and n in pairs["perfect"]]
        clipped = [min(max(g, GAIN_CLIP[0]), GAIN_CLIP[1]) for g in per_subject if g is not None]
        s["gain_per_subject"] = sum(clipped) / len(clipped) if clipped else None


def versions() -> dict:
    import diffusers
    import torch
    import transformers

    from .. import __version__

    return {"subjectgen": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}


def write_outputs(out: Path) -> dict:
    """results.json, table.md, scores.png, tradeoff.png and report.html from the finished pairs."""
    out = Path(out)
    if not (out / "bench.json").is_file():
        raise UserError(f"{out} holds no benchmark (no bench.json); run 'subjectgen bench --out {out}' first")
    hold(out)  # the bench that runs this holds it already; a second process gets a one-line error
    try:
        return merge(out)
    finally:
        release(out)


def merge(out: Path) -> dict:
    """The merge itself; write_outputs holds the folder's lock around it."""
    pairs = collect(out)
    protocol = json.loads((out / "bench.json").read_text())
    summary = {m: summarize(m, subjects) for m, subjects in pairs.items()}
    add_gains(summary, pairs)
    results = {"protocol": protocol | protocol_notes(pairs), "versions": versions(), "summary": summary,
               "pairs": pairs}
    atomic_write_json(out / "results.json", results)
    atomic_write_bytes(out / "table.md", table(results["summary"]).encode())
    draw_plots(out, results)
    atomic_write_bytes(out / "report.html", page(out, results).encode())
    return results


def draw_plots(out: Path, results: dict) -> None:
    """scores.png and tradeoff.png. Pictures only: a failure here is a warning, never the loss of the results."""
    trained = {m: s for m, s in results["summary"].items() if m != "oracle"}
    if not trained:
        return
    try:
        bar_chart(out / "scores.png", {m: [s.get(k) for k in METRICS] for m, s in trained.items()},
                  ["DINO", "CLIP-I", "CLIP-T"])
        scatter_plot(out / "tradeoff.png", {m: [(p["clip_t"], p["dino"]) for p in results["pairs"][m].values()]
                                            for m in trained}, "CLIP-T", "DINO")
    except Exception as exc:  # noqa: BLE001 - any drawing bug; the table and the report must still be written
        warnings.warn(f"could not draw the plots of {out} ({type(exc).__name__}: {exc}); results.json, table.md "
                      "and report.html are complete", stacklevel=2)


def protocol_notes(pairs: dict) -> dict:
    """Choices fixed by the code rather than by flags, written down beside the flags."""
    steps = {p.get("steps") for subjects in pairs.values() for p in subjects.values() if p.get("steps")}
    return {"sampler_steps": sorted(steps), "scheduler": "the model's own (DDIM for SD and the built-in model)",
            "seeds": "image k of every prompt uses seed + k, for every method and subject",
            "dino_preprocessing": "Resize 256/224 of the model's size, bicubic; CenterCrop; ImageNet mean/std",
            "clip_preprocessing": "Resize and CenterCrop to the model's size, bicubic; CLIP mean/std",
            "clip_t_prompt": "the prompt with the identifier removed ('a dog on the beach')",
            "averaging": "per image -> per prompt -> per subject -> mean over subjects",
            "oracle": "each real photo against the subject's other photos",
            "perfect": "the world's own render of the subject in each prompt's context (world-made benches only)",
            "gain": "(DINO_method - DINO_baseline) / (DINO_perfect - DINO_baseline) on the means over subjects; "
                    f"per subject clipped to [{GAIN_CLIP[0]:g}, {GAIN_CLIP[1]:g}]; above 1 the method copies the "
                    "photos (backdrop, pose) rather than placing the subject in the scene"}


def fmt(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def gain_text(s: dict) -> str:
    value = s.get("gain")
    return fmt(value, 2) + (" (copies the photos)" if value is not None and value > 1 else "")


def percent(value) -> str:
    return "–" if value is None else f"{value:+.1%}"


def table(summary: dict) -> str:
    """The bench table; the gain columns appear when the bench has a perfect row."""
    gains = "perfect" in summary
    head = "| method | DINO | CLIP-I | CLIP-T | " + ("gain | gain per subject | " if gains else "") + \
        "CLIP-T vs baseline | subjects | train s/subject | generate s/subject |"
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for method, s in summary.items():
        gain_cells = f"{gain_text(s)} | {fmt(s.get('gain_per_subject'), 2)} | " if gains else ""
        lines.append(f"| {method} | {fmt(s.get('dino'))} | {fmt(s.get('clip_i'))} | {fmt(s.get('clip_t'))} | "
                     f"{gain_cells}{percent(s.get('clip_t_vs_baseline'))} | {s['subjects']} | "
                     f"{fmt(s.get('train_seconds_per_subject'), 1)} | "
                     f"{fmt(s.get('generate_seconds_per_subject'), 1)} |")
    if gains:
        lines.append(f"\nGain: the share of the reachable likeness, (DINO − baseline) / (perfect − baseline): 0 is "
                     "the un-personalized baseline, 1 the world's own render of the subject in each prompt's context "
                     "(the perfect row). Above 1 a method copies the photos (their backdrop and pose) rather than "
                     f"placing the subject in the scene. Per subject: each subject's gain clipped to "
                     f"[{GAIN_CLIP[0]:g}, {GAIN_CLIP[1]:g}], then the mean.")
    return "\n".join(lines) + "\n"


def page(out: Path, results: dict) -> str:
    """One self-contained page: the table, the plots, then per method and subject the grid and scores."""
    esc = html.escape
    parts = ["<!doctype html><meta charset='utf-8'><title>subjectgen bench</title>",
             "<style>body{font-family:sans-serif;max-width:1100px}td,th{padding:2px 8px}"
             "img{image-rendering:pixelated}</style><h1>subjectgen bench</h1>",
             f"<pre>{esc(json.dumps(results['protocol'], indent=1))}</pre>",
             md_table_html(results["summary"]),
             "<p><img src='scores.png'> <img src='tradeoff.png'></p>" if (out / "scores.png").is_file() else ""]
    for method, subjects in results["pairs"].items():
        if method == "oracle":
            continue
        parts.append(f"<h2>{esc(method)}</h2>")
        for name, pair in subjects.items():
            rows = "".join(f"<tr><td>{esc(p['prompt'])}</td><td>{fmt(p['dino'])}</td><td>{fmt(p['clip_i'])}</td>"
                           f"<td>{fmt(p['clip_t'])}</td></tr>" for p in pair["prompts"])
            parts.append(f"<h3>{esc(name)} ({esc(pair['class'])}): DINO {fmt(pair['dino'])}, CLIP-I "
                         f"{fmt(pair['clip_i'])}, CLIP-T {fmt(pair['clip_t'])}; train {pair['train_seconds']:.1f} s,"
                         f" generate {pair['generate_seconds']:.1f} s</h3>"
                         f"{photos_html(out, name)}<div style='display:flex;gap:12px'><img src='pairs/{esc(method)}/{esc(name)}/grid.png' "
                         f"height='{64 * len(pair['prompts'])}'><table><tr><th>prompt</th><th>DINO</th><th>CLIP-I</th>"
                         f"<th>CLIP-T</th></tr>{rows}</table></div>")
    return "".join(parts)


def photos_html(out: Path, subject: str) -> str:
    files = sorted((out / "photos" / subject).glob("*.png"))
    return "<p>" + "".join(f"<img src='photos/{html.escape(subject)}/{f.name}' height='64'>" for f in files) + "</p>"


def md_table_html(summary: dict) -> str:
    head = "<tr><th>method</th><th>DINO</th><th>CLIP-I</th><th>CLIP-T</th><th>gain</th><th>CLIP-T vs baseline</th>" \
           "<th>train s/subject</th><th>generate s/subject</th></tr>"
    rows = "".join(f"<tr><td>{html.escape(m)}</td><td>{fmt(s.get('dino'))}</td><td>{fmt(s.get('clip_i'))}</td>"
                   f"<td>{fmt(s.get('clip_t'))}</td><td>{html.escape(gain_text(s))}</td>"
                   f"<td>{percent(s.get('clip_t_vs_baseline'))}</td>"
                   f"<td>{fmt(s.get('train_seconds_per_subject'), 1)}</td>"
                   f"<td>{fmt(s.get('generate_seconds_per_subject'), 1)}</td></tr>" for m, s in summary.items())
    return f"<table border=1 style='border-collapse:collapse'>{head}{rows}</table>"
