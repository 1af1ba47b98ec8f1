"""Merge a bench folder's finished pairs into results.json, table.md, plots and report.html.

`subjectgen report DIR` runs this alone, so tables and pages can be rebuilt (or rebuilt after more
pairs finish) without generating anything.
"""

from __future__ import annotations

import json
import platform
import warnings
from pathlib import Path

from ..config import BENCH_PROTOCOL_VERSION
from ..errors import UserError
from ..methods import registry
from ..training.outdir import hold, release
from ..safeio import atomic_write_bytes, atomic_write_json, read_json
from .html import esc, figure, fmt, metric_table, strip
from .html import page as html_page
from .plots import bar_chart, scatter_plot
from .prompts import PROMPT_TYPES, prompt_type

METRICS = ("dino", "clip_i", "clip_t")
FIRST = ("oracle", "baseline", "perfect")  # then the methods in the registry's order
REFERENCES = FIRST  # rows that are not methods a user trains
GAIN_CLIP = (-1.0, 2.0)  # a per-subject gain is clipped to this: it explodes where the perfect render is barely
                         # closer to the photos than the baseline


def collect(out: Path) -> dict[str, dict[str, dict]]:
    """method -> subject -> the pair's scores.json, for every finished pair."""
    pairs: dict[str, dict[str, dict]] = {}
    for done in sorted((out / "pairs").glob("*/*/scores.json")):
        pairs.setdefault(done.parent.parent.name, {})[done.parent.name] = read_pair(done)
    order = [*FIRST, *registry.names()]
    return dict(sorted(pairs.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))


def read_pair(done: Path) -> dict:
    """A finished pair's scores.json; a damaged one is a one-line error saying how to redo the pair."""
    return read_json(done, f"remove the pair's folder {done.parent} and rerun the bench to redo it", keys=())


def read_protocol(spec: Path) -> dict:
    """A bench folder's bench.json (the settings it was started with), read as this version's
    (config.BENCH_PROTOCOL_VERSION)."""
    saved = read_json(spec, f"the bench folder {spec.parent} is damaged; restore the file, or run the bench again in "
                            "a new --out", keys=())
    if saved.get("version", 1) < 2:
        if saved.get("subject_start", 0.0) == 0.0:
            saved["subject_start"] = None  # every run's own was 0 then
        if saved.get("eval_every", 0) == 0 and saved.get("select", "last") == "last":
            saved.update(eval_every=None, select=None)  # the weights kept were the last step's, as train's own
    if saved.get("version", 1) < 3:  # what every pair trained at then: explicit now, as methods' own may differ
        saved.update(masked_loss=bool(saved.get("masked_loss")), captioning="off")
    if saved.get("version", 1) < 4:
        saved.setdefault("train_options", {})  # none could be given then
    return {**saved, "version": BENCH_PROTOCOL_VERSION}


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
    for m in ("pres", "div"):  # DreamBooth's two checks, over the subjects that have them
        values = [s[m] for s in rows if s.get(m) is not None]
        if values:
            summary[m] = sum(values) / len(values)
    if method != "oracle" and rows:
        summary["by_type"] = by_prompt_type(rows)
        summary["train_seconds_per_subject"] = sum(s["train_seconds"] for s in rows) / len(rows)
        summary["generate_seconds_per_subject"] = sum(s["generate_seconds"] for s in rows) / len(rows)
        timed = [s["time_to_subject_seconds"] for s in rows if s.get("time_to_subject_seconds") is not None]
        if timed:
            summary["time_to_subject_seconds_per_subject"] = sum(timed) / len(timed)
    return summary


def by_prompt_type(rows: list[dict]) -> dict[str, dict]:
    """DINO, CLIP-I and CLIP-T per prompt type (prompts.prompt_type), averaged as the whole table is: each subject's
    mean over its prompts of the type, then the mean over the subjects that have such prompts."""
    out = {}
    for kind in PROMPT_TYPES:
        per_subject = []
        for s in rows:
            mine = [p for p in s.get("prompts", []) if prompt_type(p["template"]) == kind]
            if mine:
                per_subject.append({m: sum(p[m] for p in mine) / len(mine) for m in METRICS})
        if per_subject:
            out[kind] = {**{m: sum(r[m] for r in per_subject) / len(per_subject) for m in METRICS},
                         "subjects": len(per_subject)}
    return out


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
    protocol = read_protocol(out / "bench.json")
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
        curves = {m: eval_curve(results["pairs"][m]) for m in trained}
        scatter_plot(out / "tradeoff.png", {m: [(p["clip_t"], p["dino"]) for p in results["pairs"][m].values()]
                                            for m in trained}, "CLIP-T", "DINO",
                     curves={m: c for m, (c, _) in curves.items() if c},
                     chosen={m: point for m, (_, point) in curves.items() if point})
    except Exception as exc:  # noqa: BLE001 - any drawing bug; the table and the report must still be written
        warnings.warn(f"could not draw the plots of {out} ({type(exc).__name__}: {exc}); results.json, table.md "
                      "and report.html are complete", stacklevel=2)


def eval_curve(subjects: dict[str, dict]) -> tuple[list[tuple[float, float]], tuple[float, float] | None]:
    """A method's eval curve as (CLIP-T, DINO) points, averaged over its subjects' runs: the base model's row, then
    each step every run scored; and the mean of the points each run chose. ([], None) without eval points."""
    evals = [p["evaluation"] for p in subjects.values() if p.get("evaluation") and p["evaluation"]["curve"]]
    if not evals:
        return [], None

    def mean(rows: list[dict]) -> tuple[float, float]:
        return sum(r["clip_t"] for r in rows) / len(rows), sum(r["dino"] for r in rows) / len(rows)

    steps = sorted(set.intersection(*({r["step"] for r in e["curve"]} for e in evals)))
    curve = [mean([e["base"] for e in evals])]
    curve += [mean([next(r for r in e["curve"] if r["step"] == step) for e in evals]) for step in steps]
    chosen = [r for e in evals for r in e["curve"] if r["step"] == e["chosen_step"]]
    return curve, mean(chosen) if chosen else None


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
            "pres": "DINO of the model's images of the class prompt alone ('a dog', seeds seed + k, pres_images per "
                    "subject) against the subject's photos, averaged per subject; lower is better",
            "div": "1 - the mean DINO cosine of every pair of distinct images of one prompt, per prompt -> per subject "
                   "-> mean over subjects (DreamBooth's DIV with DINO in place of LPIPS)",
            "perfect": "the world's own render of the subject in each prompt's context (world-made benches only)",
            "gain": "(DINO_method - DINO_baseline) / (DINO_perfect - DINO_baseline) on the means over subjects; "
                    f"per subject clipped to [{GAIN_CLIP[0]:g}, {GAIN_CLIP[1]:g}]; above 1 the method copies the "
                    "photos (backdrop, pose) rather than placing the subject in the scene"}


def gain_text(s: dict) -> str:
    value = s.get("gain")
    return fmt(value, 2) + (" (copies the photos)" if value is not None and value > 1 else "")


def percent(value) -> str:
    return "–" if value is None else f"{value:+.1%}"


def table(summary: dict) -> str:
    """The bench table; the gain columns appear when the bench has a perfect row."""
    gains = "perfect" in summary
    head = "| method | DINO | CLIP-I | CLIP-T | " + ("gain | gain per subject | " if gains else "") + \
        "CLIP-T vs baseline | PRES ↓ | DIV ↑ | subjects | train s/subject | generate s/subject |"
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for method, s in summary.items():
        gain_cells = f"{gain_text(s)} | {fmt(s.get('gain_per_subject'), 2)} | " if gains else ""
        lines.append(f"| {method} | {fmt(s.get('dino'))} | {fmt(s.get('clip_i'))} | {fmt(s.get('clip_t'))} | "
                     f"{gain_cells}{percent(s.get('clip_t_vs_baseline'))} | {fmt(s.get('pres'))} | "
                     f"{fmt(s.get('div'))} | {s['subjects']} | "
                     f"{fmt(s.get('train_seconds_per_subject'), 1)} | "
                     f"{fmt(s.get('generate_seconds_per_subject'), 1)} |")
    if gains:
        lines.append(f"\nGain: the share of the reachable likeness, (DINO − baseline) / (perfect − baseline): 0 is "
                     "the un-personalized baseline, 1 the world's own render of the subject in each prompt's context "
                     "(the perfect row). Above 1 a method copies the photos (their backdrop and pose) rather than "
                     f"placing the subject in the scene. Per subject: each subject's gain clipped to "
                     f"[{GAIN_CLIP[0]:g}, {GAIN_CLIP[1]:g}], then the mean.")
    if any(s.get("pres") is not None or s.get("div") is not None for s in summary.values()):
        lines.append(f"\n{CHECKS_NOTE}")
    if any(s.get("by_type") for s in summary.values()):
        lines += ["", type_table(summary)]
    return "\n".join(lines) + "\n"


TYPES_NOTE = ("By prompt type (DreamBench's: recontextualization, a new scene; accessorization, an outfit, live subjects "
              "only; property, the subject itself changed), each subject's mean over its prompts of the type, then the "
              "mean over the subjects that have them.")


def type_table(summary: dict) -> str:
    """table.md's second table: DINO, CLIP-I and CLIP-T per method and prompt type."""
    lines = [TYPES_NOTE, "", "| method | prompt type | DINO | CLIP-I | CLIP-T | subjects |", "|---|---|---|---|---|---|"]
    for method, s in summary.items():
        for kind, t in s.get("by_type", {}).items():
            lines.append(f"| {method} | {kind} | {fmt(t['dino'])} | {fmt(t['clip_i'])} | {fmt(t['clip_t'])} | "
                         f"{t['subjects']} |")
    return "\n".join(lines)


CHECKS_NOTE = ("PRES (language drift, lower is better): DINO of the images the model makes from the class prompt alone "
               "('a dog') against the subject's photos; above the baseline's, the class itself has drifted onto the "
               "subject. DIV (higher is better): 1 − the mean DINO similarity of every pair of images of one subject "
               "and prompt (DreamBooth's paper uses LPIPS, which cannot be had offline).")


def page(out: Path, results: dict) -> str:
    """report.html: the summary table (arrows, reference rows explained), the plots, and every subject with its
    photos, linking to its own page (subjects/NAME.html, written here too)."""
    protocol, pairs = results["protocol"], results["pairs"]
    methods = [m for m in pairs if m not in REFERENCES]
    subjects = sorted({name for m in pairs.values() for name in m})
    for name in subjects:
        atomic_write_bytes(out / "subjects" / f"{name}.html", subject_page(out, name, results).encode())
    extra = {"gain": gain_text, "CLIP-T vs baseline": lambda s: percent(s.get("clip_t_vs_baseline")),
             "PRES ↓": lambda s: fmt(s.get("pres")), "DIV ↑": lambda s: fmt(s.get("div")),
             "train s/subject": lambda s: fmt(s.get("train_seconds_per_subject"), 1),
             "time to subject s": lambda s: fmt(s.get("time_to_subject_seconds_per_subject"), 1),
             "generate s/subject": lambda s: fmt(s.get("generate_seconds_per_subject"), 1)}
    parts = [f"<h1>subjectgen bench</h1><p class='lede'>{esc(protocol.get('bench'))} · model "
             f"<code>{esc(protocol.get('model'))}</code> · {len(subjects)} subjects · "
             f"{esc(protocol.get('images_per_prompt'))} image(s) per prompt · methods: {esc(', '.join(methods))}</p>",
             f"<div class='card'><h2>Scores (mean over subjects)</h2>{metric_table(results['summary'], extra)}"
             f"<p class='note'>{esc(CHECKS_NOTE)}</p></div>", type_card(results["summary"])]
    if (out / "scores.png").is_file():
        parts.append("<div class='card plots'><h2>Per metric, and the trade-off (each dot a subject: CLIP-T "
                     "against DINO; up and right is better)</h2><p class='note'>A ring marks each method's mean. "
                     "Where the runs scored eval points while training (bench --eval-every), a line is the method's "
                     "eval curve, from the base model through each eval step (on the held-out eval prompts, averaged "
                     "over subjects), and a diamond the mean of the points its runs kept.</p>"
                     "<img src='scores.png' alt='scores per metric'> "
                     "<img src='tradeoff.png' alt='CLIP-T against DINO per subject'></div>")
    rows = []
    for name in subjects:
        noun = next((m[name].get("class") for m in pairs.values() if name in m and m[name].get("class")), "")
        cells = " ".join(f"<span class='tag'>{esc(m)}: DINO {fmt(pairs[m][name].get('dino'))}, CLIP-T "
                         f"{fmt(pairs[m][name].get('clip_t'))}</span>" for m in methods if name in pairs[m])
        rows.append(f"<div class='row'><div class='label'><a href='subjects/{esc(name)}.html'><b>{esc(name)}</b></a>"
                    f" ({esc(noun)})<br>{cells}</div>{photo_strip(out, name, '', 64)}</div>")
    parts.append(f"<div class='card'><h2>Subjects</h2><p class='note'>Each subject's photos; its page shows every "
                 f"prompt's images, labelled, method by method.</p>{''.join(rows)}</div>")
    parts.append(f"<details class='card'><summary>Protocol</summary><pre>{esc(json.dumps(protocol, indent=1))}</pre>"
                 f"<pre>{esc(json.dumps(results['versions'], indent=1))}</pre></details>")
    return html_page("subjectgen bench", parts)


def type_card(summary: dict) -> str:
    """report.html's table per method and prompt type ('' when no method has prompts)."""
    rows = "".join(f"<tr><td>{esc(m)}</td><td>{esc(kind)}</td>" + "".join(f"<td>{fmt(t[k])}</td>" for k in METRICS)
                   + f"<td>{t['subjects']}</td></tr>" for m, s in summary.items()
                   for kind, t in s.get("by_type", {}).items())
    if not rows:
        return ""
    return ("<div class='card'><h2>By prompt type</h2><table><tr><th>method</th><th>prompt type</th><th>DINO ↑</th>"
            f"<th>CLIP-I ↑</th><th>CLIP-T ↑</th><th>subjects</th></tr>{rows}</table>"
            f"<p class='note'>{esc(TYPES_NOTE)}</p></div>")


def subject_page(out: Path, name: str, results: dict) -> str:
    """One subject: its photos first, its scores per method, then per prompt every method's images with seeds."""
    pairs, seed = results["pairs"], results["protocol"].get("seed", 0)
    mine = {m: subjects[name] for m, subjects in pairs.items() if name in subjects}
    noun = next((p.get("class") for p in mine.values() if p.get("class")), "")
    extra = {"PRES ↓": lambda s: fmt(s.get("pres")), "DIV ↑": lambda s: fmt(s.get("div")),
             "train s": lambda s: fmt(s.get("train_seconds"), 1),
             "generate s": lambda s: fmt(s.get("generate_seconds"), 1)}
    parts = [f"<p><a href='../report.html'>← all subjects</a></p><h1>{esc(name)}</h1><p class='lede'>class: "
             f"{esc(noun)}</p><div class='card'><h2>The subject's photos</h2>"
             f"{photo_strip(out, name, '../', 128)}</div>",
             f"<div class='card'><h2>Scores</h2>{metric_table(mine, extra)}</div>"]
    with_images = [m for m, p in mine.items() if p.get("prompts")]
    prompts = mine[with_images[0]]["prompts"] if with_images else []
    rows = []
    for i, prompt in enumerate(prompts):
        figures = [figure(f"../{f}", f"{m} · seed {seed + j}") for m in with_images
                   for j, f in enumerate(mine[m]["prompts"][i]["files"])]
        rows.append(f"<div class='row'><div class='label'><b>{esc(prompt['prompt'])}</b><br>"
                    + "<br>".join(f"{esc(m)}: DINO {fmt(mine[m]['prompts'][i]['dino'])}, CLIP-T "
                                  f"{fmt(mine[m]['prompts'][i]['clip_t'])}" for m in with_images)
                    + f"</div>{strip(figures)}</div>")
    parts.append(f"<div class='card'><h2>Images, prompt by prompt</h2>{''.join(rows)}</div>")
    return html_page(f"subjectgen bench: {name}", parts)


def photo_strip(out: Path, subject: str, prefix: str, size: int) -> str:
    files = sorted((out / "photos" / subject).glob("*.png"))
    return strip([figure(f"{prefix}photos/{subject}/{f.name}", f"photo {k + 1}", size) for k, f in enumerate(files)])
