"""The fair comparison (issue 38): every method at settings chosen by one rule on the validation subjects, then
EmojiBench at those settings against each method's current default.

The rule and the grid were committed before any of these runs (docs/BENCHMARK.md, "Choosing settings honestly"):

- **Validation** (`--stage validation`): for each method, each row of GRID is one `subjectgen bench` folder on
  the 16 validation subjects (`world build --set validation`, never EmojiBench), 25 prompts x 1 image, built-in
  evaluators, PRES on. Steps come free from the eval curve: every row but the current default trains
  with `--eval-every` and `--select best` (the in-training rule of docs/BENCHMARK.md keeps each run's step).
- **The rule**, per method: the row with the highest mean DINO among the rows whose mean CLIP-T is at least
  90 % of the baseline's (CLIP_T_SHARE); ties go to the earlier row; when no row keeps 90 %, the row with the
  highest CLIP-T (the least drift) — the same rule as the step's, one level up.
- **EmojiBench** (`--stage emojibench`): each method whose validation rows are all finished, at its current
  default and at its chosen row, 25 prompts x 2 images (so DIV exists), PRES on.
- **Pins**: every row passes the settings a default could change (PINNED: the grid's first row is the method's
  default when the grid was fixed), so a row is the same run after the chosen settings became the defaults.

Resumable: a rerun reuses every finished pair (the bench's own resume), and the baseline is copied between
folders of one set (`--runs-from`). `--max-minutes` stops the slice at a deadline (the bench pair in flight is
killed and trained again next time). Run at one thread in the background: it takes CPU-hours.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from starting_point import validation_folder

from subjectgen.config import EVAL_SAMPLE_STEPS_SMALL
from subjectgen.eval.html import fmt
from subjectgen.eval.report import type_table
from subjectgen.training.evaluation import CLIP_T_SHARE, EvalPoint
from subjectgen.training.evaluation import choose as rule

EVAL = ["--eval-every", "50", "--select", "best", "--eval-sample-steps", "25"]  # 25: as the first rows ran
CAPTIONED = "captions"  # the rows trained on the validation photos with the built-in captioner's NAME.txt

# What each method's defaults were when the grid was fixed, and the sampling and eval settings every row ran at unless
# it says otherwise: every row pins them, so a row is the same run after the chosen settings became the defaults.
# The settings of the rows added later (--prior-preservation, --prior-weight, --rank, --num-vectors) are not pinned:
# pinning them would change the finished rows' folders. Before one of their choices becomes a default, bench.json must
# learn to read those folders' {} as the old default (as read_protocol does for masked_loss before version 3).
# A pin is one setting's flags; a row that sets the setting (in either form: --masked-loss, --no-masked-loss) keeps its
# own.
PINNED = {"lora": [("--train-steps", "300"), ("--train-lr", "1e-3")],
          "dreambooth": [("--train-steps", "300"), ("--train-lr", "1e-4")],
          "textual-inversion": [("--train-steps", "500"), ("--train-lr", "5e-3")]}
PINNED_ALL = [("--eval-every", "0"), ("--subject-start", "0"), ("--no-masked-loss",), ("--captions", "off")]

# method -> (row name, bench flags); the first row is the method's default when the grid was fixed (its name, and so
# its folder's, keeps 'current'). The order is the tie order and the order the rows are run in. "captions" rows train
# on a copy of the subjects with captions beside the photos; an ON_BEST row is the rule's choice among the rows above
# it with the row's own flags added (a greedy search).
ON_BEST = "on the best row above"
GRID = {
    "lora": [
        ("current default (300 steps)", []),
        ("steps by rule (400, eval every 50)", ["--train-steps", "400", *EVAL]),
        ("steps by rule, masked loss", ["--train-steps", "400", *EVAL, "--masked-loss"]),
        ("steps by rule, lr 3e-4", ["--train-steps", "400", *EVAL, "--train-lr", "3e-4"]),
        ("steps by rule, captions", ["--train-steps", "400", *EVAL, CAPTIONED]),
        ("steps by rule, --subject-start 0.4", ["--train-steps", "400", *EVAL, "--subject-start", "0.4"]),
        # added after the six above had run (GRID_HISTORY)
        ("steps by rule, masked loss, --subject-start 0.4",
         ["--train-steps", "400", *EVAL, "--masked-loss", "--subject-start", "0.4"]),
        # added after every row above had run (GRID_HISTORY)
        ("the best row above, prior preservation", [ON_BEST, "--prior-preservation"]),
        ("the best row above, rank 16", [ON_BEST, "--rank", "16"]),
    ],
    "dreambooth": [
        ("current default (300 steps, prior preservation)", []),
        ("steps by rule (400, eval every 50)", ["--train-steps", "400", *EVAL]),
        # from here on set after the row above had run (GRID_HISTORY)
        ("steps by rule, lr 3e-5", ["--train-steps", "400", *EVAL, "--train-lr", "3e-5"]),
        ("steps by rule, lr 1e-5", ["--train-steps", "400", *EVAL, "--train-lr", "1e-5"]),
        ("the best row above, masked loss", [ON_BEST, "--masked-loss"]),
        ("the best row above, captions", [ON_BEST, CAPTIONED]),
        ("the best row above, prior weight 2", [ON_BEST, "--prior-weight", "2"]),  # added later (GRID_HISTORY)
    ],
    "textual-inversion": [
        ("current default (500 steps)", []),
        ("steps by rule (600, eval every 50)", ["--train-steps", "600", *EVAL]),
        ("steps by rule, lr 1.5e-3", ["--train-steps", "600", *EVAL, "--train-lr", "1.5e-3"]),
        ("the best row above, masked loss", [ON_BEST, "--masked-loss"]),
        ("the best row above, captions", [ON_BEST, CAPTIONED]),
        ("the best row above, 4 vectors", [ON_BEST, "--num-vectors", "4"]),  # added later (GRID_HISTORY)
    ],
}


# The methods with no grid here, on EmojiBench at their defaults only (ProFusion's were chosen on the validation
# subjects by benchmarks/profusion.py; the apprentice trains nothing per subject): PRES, DIV and the methods' order.
ZERO_SHOT = {"profusion": "default (the encoder alone, Fusion Sampling)", "apprentice": "default (zero-shot)"}


# How each grid changed after its first rows ran (docs/BENCHMARK.md: the grid does not grow without saying so).
LATER = ("{} added after every other row had run, because the issue's list of the settings that matter names {} "
         "and the first grid had left {} out; on the best row above (greedy), by the same rule.")
GRID_HISTORY = {
    "lora": "The seventh row was added after the six above had run: the two settings that had helped, together. " +
            LATER.format("The last two rows were", "prior preservation and the rank", "them"),
    "dreambooth": "The rows after the second were set after it had run: at lr 1e-4 the eval points' CLIP-T had fallen "
                  "to 0.14-0.64 of the base model's (median 0.39) by the first eval point (step 50) on every "
                  "subject, so two lower rates, then "
                  "the greedy rows (a masked loss, then captions, each on the best row above). The rule was not "
                  "changed. " + LATER.format("The last row was", "the prior weight", "it"),
    "textual-inversion": LATER.format("The last row was", "the number of vectors", "it"),
}


class OutOfTime(Exception):
    pass


def slug(row: str) -> str:
    return "".join(c if c.isalnum() or c in ".-" else "-" for c in row).strip("-")


def bench(args: list[str], deadline: float) -> None:
    """One `subjectgen bench`, killed (with its workers) at the deadline; the next slice resumes it."""
    command = [sys.executable, "-m", "subjectgen.cli", "bench", "--quiet", "--workers", "1", *args]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        code = process.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise OutOfTime from None
    if code:
        raise SystemExit(f"bench {' '.join(args)} failed (exit {code})")


def captioned_folder(source: str, folder: Path) -> str:
    """A copy of the bench folder with a NAME.txt caption beside each photo, by the built-in captioner (the
    generator side's image encoder over the world's scene words, as `train --captions auto` writes them)."""
    if (folder / "prompts_and_classes.txt").is_file():
        return str(folder)
    from subjectgen.captions import SceneInterrogator
    from subjectgen.eval.prompts import read_benchmark
    from subjectgen.models import load_model
    from subjectgen.photos import open_photo, photo_paths

    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial)
    components = load_model("builtin")
    for name, noun in read_benchmark(partial).classes.items():
        paths = photo_paths(partial / name)
        for path, text in zip(paths, SceneInterrogator(components, noun)([open_photo(p) for p in paths])):
            path.with_suffix(".txt").write_text(text + "\n")
    partial.rename(folder)
    return str(folder)


def row_flags(method: str, index: int, out: Path) -> list[str] | None:
    """Row `index`'s bench flags, an ON_BEST row's resolved against the rows above it (None while they run)."""
    flags = own_flags(method, index, out)
    return None if flags is None else pinned(method, flags)


def own_flags(method: str, index: int, out: Path) -> list[str] | None:
    """Row `index`'s own flags, before the pins: an ON_BEST row's are the best row's with its own added."""
    flags = GRID[method][index][1]
    if ON_BEST not in flags:
        return list(flags)
    above = [(name, s) for name, _ in GRID[method][:index]
             if (s := summary(out / "validation" / method / slug(name), method))]
    if len(above) < index:
        return None
    best = own_flags(method, [name for name, _ in GRID[method]].index(choose(above)), out)
    own = [f for f in flags if f != ON_BEST]
    mine = {setting_of(group[0]) for group in flag_groups(own)}
    return [f for group in flag_groups(best) if setting_of(group[0]) not in mine for f in group] + own


def flag_groups(flags: list[str]) -> list[list[str]]:
    """Flags with their values, one group per setting (['--rank', '16'], ['--masked-loss'], [CAPTIONED])."""
    groups: list[list[str]] = []
    for f in flags:
        if f.startswith("--") or f == CAPTIONED or not groups:
            groups.append([f])
        else:
            groups[-1].append(f)
    return groups


def pinned(method: str, flags: list[str]) -> list[str]:
    """A row's flags with each PINNED setting it does not set itself."""
    own = {setting_of(f) for f in flags if f.startswith("--")}
    return list(flags) + [x for pin in PINNED[method] + PINNED_ALL if setting_of(pin[0]) not in own for x in pin]


def setting_of(flag: str) -> str:
    """The setting a bench flag sets: --no-masked-loss and --masked-loss both set masked-loss."""
    return flag.removeprefix("--no-").removeprefix("--")


def training_flags(flags: list[str]) -> list[str]:
    """The flags that change the runs (--subject-start is a sampling setting: the runs are the same)."""
    flags = list(flags)
    if "--subject-start" in flags:
        del flags[flags.index("--subject-start"):flags.index("--subject-start") + 2]
    return flags


def reuse_source(method: str, index: int, out: Path, captioned: bool) -> list[str]:
    """--runs-from for row `index` of `method`: its earlier row trained the same way (the runs), else the first row
    of any method on the same photos (the baseline)."""
    mine = training_flags(row_flags(method, index, out))
    same = [j for j in range(index) if training_flags(row_flags(method, j, out)) == mine]
    if same:
        return ["--runs-from", str(out / "validation" / method / slug(GRID[method][same[-1]][0]))]
    earlier = [(m, name) for m, grid in GRID.items() for j, (name, flags) in enumerate(grid)
               if (CAPTIONED in (row_flags(m, j, out) or [])) == captioned and (m, j) != (method, index)
               and (out / "validation" / m / slug(name) / "results.json").is_file()]
    return ["--runs-from", str(out / "validation" / earlier[0][0] / slug(earlier[0][1]))] if earlier else []


def run_rows(method: str, out: Path, subjects: str, deadline: float) -> None:
    for index, (row, _) in enumerate(GRID[method]):
        flags = row_flags(method, index, out)
        captioned = CAPTIONED in flags
        source = captioned_folder(subjects, out / "validation-captioned") if captioned else subjects
        bench(["--bench", source, "--methods", method, "--images-per-prompt", "1", "--dino", "builtin", "--clip",
               "builtin", "--out", str(out / "validation" / method / slug(row)),
               *[f for f in flags if f != CAPTIONED], *reuse_source(method, index, out, captioned)], deadline)


def summary(folder: Path, method: str) -> dict | None:
    path = folder / "results.json"
    if not path.is_file():
        return None
    results = json.loads(path.read_text())
    base = results["pairs"]["baseline"]
    mine = results["pairs"].get(method, {})
    s = dict(results["summary"][method])
    wins = [n for n in mine if mine[n]["dino"] > base[n]["dino"] and mine[n]["clip_i"] > base[n]["clip_i"]]
    s["wins"] = len(wins)
    s["wins_in_budget"] = sum(mine[n]["clip_t"] >= CLIP_T_SHARE * base[n]["clip_t"] for n in wins)
    steps = [p["evaluation"]["chosen_step"] for p in mine.values() if p.get("evaluation")]
    s["steps"] = f"{min(steps)}-{max(steps)} (median {sorted(steps)[len(steps) // 2]})" if steps else "last"
    s["baseline_clip_t"] = results["summary"]["baseline"]["clip_t"]
    s["baseline"] = results["summary"]["baseline"]
    return s


def choose(rows: list[tuple[str, dict]]) -> str | None:
    """The rule, the very one that keeps a run's step (training.evaluation.choose), over the rows' means: the
    highest DINO within the CLIP-T budget (ties: the earlier row); else the highest CLIP-T."""
    if not rows:
        return None
    points = [EvalPoint(i, s["dino"], s["clip_i"], s["clip_t"]) for i, (_, s) in enumerate(rows)]
    return rows[rule(points, rows[0][1]["baseline_clip_t"], CLIP_T_SHARE).step][0]


def table(rows: list[tuple[str, dict]], chosen: str | None) -> None:
    print("| setting | DINO | CLIP-I | CLIP-T | gain | CLIP-T vs baseline | PRES | DIV | beats baseline on DINO "
          "and CLIP-I (and within the CLIP-T budget) | steps kept | train s/subject |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    base = rows[0][1]["baseline"]
    print(f"| baseline (the base model, class prompt) | {fmt(base['dino'])} | {fmt(base['clip_i'])} | "
          f"{fmt(base['clip_t'])} | 0 | – | {fmt(base.get('pres'))} | {fmt(base.get('div'))} | – | – | – |")
    for name, s in rows:
        mark = " (**chosen**)" if name == chosen else ""
        print(f"| {name}{mark} | {fmt(s['dino'])} | {fmt(s['clip_i'])} | {fmt(s['clip_t'])} | {fmt(s.get('gain'), 2)} "
              f"| {s['clip_t_vs_baseline']:+.1%} | {fmt(s.get('pres'))} | {fmt(s.get('div'))} | "
              f"{s['wins']}/{s['subjects']} ({s['wins_in_budget']}) | {s['steps']} | "
              f"{s['train_seconds_per_subject']:.0f} |")


def validation_results(out: Path) -> dict[str, tuple[list, str | None]]:
    """method -> (its finished rows with their summaries, the rule's choice once every row is finished)."""
    results = {}
    for method, grid in GRID.items():
        rows = [(name, s) for name, _ in grid if (s := summary(out / "validation" / method / slug(name), method))]
        results[method] = rows, choose(rows) if len(rows) == len(grid) else None
    return results


def tradeoff_figure(out: Path, results: dict[str, tuple[list, str | None]], path: Path) -> None:
    """DINO against CLIP-T on the validation subjects: a dot per row of each method's grid, the mean eval curve of
    its steps-by-rule row (the base model's point, then each eval step) as a line, a diamond at the rule's choice;
    the baseline and the perfect row (the world's own render) for scale."""
    from subjectgen.eval.plots import scatter_plot
    from subjectgen.eval.report import eval_curve

    finished = {m: rows for m, (rows, _) in results.items() if rows}
    if not finished:
        return
    base = next(iter(finished.values()))[0][1]["baseline"]
    perfect = json.loads((out / "validation" / next(iter(finished)) / slug(GRID[next(iter(finished))][0][0])
                          / "results.json").read_text())["summary"].get("perfect")
    points = {m: [(s["clip_t"], s["dino"]) for _, s in rows] for m, rows in finished.items()}
    points["baseline"] = [(base["clip_t"], base["dino"])]
    if perfect:
        points["perfect"] = [(perfect["clip_t"], perfect["dino"])]
    curves = {}
    for method in finished:
        folder = out / "validation" / method / slug(GRID[method][1][0]) / "results.json"
        if folder.is_file():
            curves[method] = eval_curve(json.loads(folder.read_text())["pairs"][method])[0]
    chosen = {m: next((s["clip_t"], s["dino"]) for name, s in results[m][0] if name == pick)
              for m, (_, pick) in results.items() if pick}
    scatter_plot(path, points, "CLIP-T", "DINO", curves=curves, chosen=chosen, mean_rings=False)


SHEET_PROMPTS = [0, 12, 20]  # one per type: a new scene, another scene (an outfit for live subjects), a property


def contact_sheets(out: Path, results: dict[str, tuple[list, str | None]], folder: Path) -> list[Path]:
    """For each method with two rows or more: the baseline, the current default, the rule's pick (so far, while rows
    are unfinished) and the perfect row on every validation subject, SHEET_PROMPTS' first images."""
    from sheet import compare

    written = []
    for method, (rows, chosen) in results.items():
        if len(rows) < 2:
            continue
        pick = chosen or choose(rows)
        default, picked = (out / "validation" / method / slug(name) for name in (rows[0][0], pick))
        columns = [("baseline", default, "baseline"), ("default", default, method), ("picked", picked, method),
                   ("perfect", default, "perfect")]
        path = folder / f"fair_{method}.jpg"  # photo-like: a PNG would be 1 MB
        path.parent.mkdir(parents=True, exist_ok=True)
        compare(columns, SHEET_PROMPTS, None, 1).save(path, quality=90)
        written.append(path)
    return written


def builtin_defaults(method: str) -> str:
    """The method's defaults on the built-in model today (the registry's), so the report says whether the choice
    became them: the grid's first row pins what they were."""
    from subjectgen.methods import registry

    spec = registry.get(method)
    steps, lr, start = (spec.default(k, small=True) for k in ("steps", "lr", "subject_start"))
    evaluation = (f"{spec.builtin_eval[0]} eval points (every {steps // spec.builtin_eval[0]} steps, at "
                  f"`--eval-sample-steps` {EVAL_SAMPLE_STEPS_SMALL}), the {spec.builtin_eval[1]} step kept"
                  if spec.builtin_eval else "no eval points, the last step kept")
    masked = "a masked loss (where masks are)" if spec.default("masked_loss", small=True) else "no masked loss"
    captions = ("captions by the built-in captioner (kept in the run)" if spec.builtin_defaults.get("captioning")
                else "no captions made")
    return (f"The built-in model's defaults for {method} today: {steps} steps at lr {lr:g}, {evaluation}, "
            f"`--subject-start` {start:g}, {masked}, {captions}; the first row pins "
            f"{' '.join(x for pin in PINNED[method] for x in pin)}.")


def report_validation(results: dict[str, tuple[list, str | None]]) -> None:
    for method, (rows, chosen) in results.items():
        print(f"### {method} on the validation subjects ({len(rows)} of {len(GRID[method])} rows finished)\n")
        if rows:
            table(rows, chosen)
            base = rows[0][1]["baseline_clip_t"]
            print(f"\nBaseline CLIP-T {base:.3f}; within the budget: {CLIP_T_SHARE * base:.3f} or more.")
        if method in GRID_HISTORY:
            print(GRID_HISTORY[method])
        print("Chosen by the rule: " + (f"**{chosen}**." if chosen else "not yet (rows unfinished).") + "\n")
        print(builtin_defaults(method) + "\n")


def run_emojibench(out: Path, choices: dict[str, str], deadline: float) -> None:
    for method, chosen in choices.items():
        if chosen is None:
            continue
        names = [name for name, _ in GRID[method]]
        for row in dict.fromkeys([names[0], chosen]):
            first = out / "emojibench" / method / slug(GRID[method][0][0])
            folder = out / "emojibench" / method / slug(row)
            flags = row_flags(method, names.index(row), out)
            source = "emoji"
            if CAPTIONED in flags:  # captions are the captioner's, as a user's `--captions auto` would write them
                from subjectgen.eval.prompts import resolve_bench
                source = captioned_folder(str(resolve_bench("emoji")), out / "emojibench-captioned")
            reuse = ["--runs-from", str(first)] if folder != first and CAPTIONED not in flags else []
            if folder == first:  # the baseline, from another method's first folder (the same images)
                reuse = baseline_source(out, method)
            bench(["--bench", source, "--methods", method, "--images-per-prompt", "2", "--dino", "builtin",
                   "--clip", "builtin", "--out", str(folder), *[f for f in flags if f != CAPTIONED], *reuse], deadline)


def run_zero_shot(out: Path, methods: list[str], deadline: float) -> None:
    """The ZERO_SHOT methods on EmojiBench at their defaults, the baseline copied from a grid method's first folder."""
    for method in methods:
        bench(["--bench", "emoji", "--methods", method, "--images-per-prompt", "2", "--dino", "builtin", "--clip",
               "builtin", "--out", str(out / "emojibench" / method / slug(ZERO_SHOT[method])),
               *baseline_source(out, method)], deadline)


def baseline_source(out: Path, method: str) -> list[str]:
    """--runs-from the first EmojiBench folder another grid method has begun: its baseline's pairs are the same
    images (30 subjects x 50 images, sampled again otherwise)."""
    others = [out / "emojibench" / m / slug(GRID[m][0][0]) for m in GRID if m != method]
    return next((["--runs-from", str(o)] for o in others if (o / "bench.json").is_file()), [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/out/fair")
    parser.add_argument("--stage", action="append", default=[], choices=("validation", "emojibench"),
                        help="run these stages (default: none, only the report of what is finished)")
    parser.add_argument("--methods", default=",".join([*GRID, *ZERO_SHOT]), help="the methods whose rows to run")
    parser.add_argument("--max-minutes", type=float, default=float("inf"), help="stop the slice after this long")
    parser.add_argument("--figure", default="docs/images/fair_tradeoff.png", help="where the trade-off figure goes")
    args = parser.parse_args()
    out, started, methods = Path(args.out), time.time(), args.methods.split(",")
    deadline = started + args.max_minutes * 60
    try:
        if "validation" in args.stage:
            for method in (m for m in methods if m in GRID):
                run_rows(method, out, validation_folder(), deadline)
        if "emojibench" in args.stage:
            choices = {m: chosen for m, (_, chosen) in validation_results(out).items() if m in methods}
            run_emojibench(out, choices, deadline)
            run_zero_shot(out, [m for m in methods if m in ZERO_SHOT], deadline)
    except OutOfTime:
        print(f"(slice stopped after {args.max_minutes:g} min; rerun to go on)\n")
    results = validation_results(out)
    report_validation(results)
    tradeoff_figure(out, results, Path(args.figure))
    sheets = contact_sheets(out, results, Path(args.figure).parent)
    print(f"The trade-off on the validation subjects ({args.figure}): DINO against CLIP-T, a dot per row of each "
          "method's grid, a line through the mean eval curve of its steps-by-rule row (from the base model's point "
          "through each eval step), a diamond at the rule's choice; the baseline and the perfect row for scale.\n")
    if sheets:
        print(f"Contact sheets ({', '.join(map(str, sheets))}): each validation subject's first photo, then for "
              f"prompts {', '.join(map(str, SHEET_PROMPTS))} of its list (a new scene; a second scene, or an outfit "
              "for a live subject; a red one) the first image of the baseline, the current default, the rule's pick "
              "(so far, while rows are unfinished) and the perfect row.\n")
    report_emojibench(out, results)
    print(f"Wall clock of this invocation: {(time.time() - started) / 60:.1f} min (finished pairs are reused).")


def emojibench_size() -> int:
    from subjectgen.eval.prompts import read_benchmark, resolve_bench

    return len(read_benchmark(resolve_bench("emoji")).classes)


def report_emojibench(out: Path, results: dict[str, tuple[list, str | None]]) -> None:
    """Each method's first row against its chosen one; while rows are unfinished, the choice among the finished
    ones (the EmojiBench stage waits for the final one)."""
    print("### EmojiBench: each method's current default against its chosen setting\n")
    choices = {}
    for method, (finished, final) in results.items():
        chosen = choices[method] = final or choose(finished)
        if chosen is None:
            continue
        rows = [(n, s) for n in dict.fromkeys([GRID[method][0][0], chosen])
                if (s := summary(out / "emojibench" / method / slug(n), method))]
        print(f"**{method}**\n")
        if final is None:
            print(f"(the rule's choice among the {len(finished)} of {len(GRID[method])} validation rows finished; "
                  "the others may change it)\n")
        if rows:
            table(rows, chosen)
            print()
            by_type = {"baseline": rows[0][1]["baseline"]} | {name: s for name, s in rows}
            print(type_table(by_type))
        else:
            done = {n: len(list((out / "emojibench" / method / slug(n) / "pairs" / method).glob("*/scores.json")))
                    for n in dict.fromkeys([GRID[method][0][0], chosen])}
            print("Not finished (`python benchmarks/fair.py --stage emojibench` resumes it): subjects done, "
                  + "; ".join(f"{n}: {k} of {emojibench_size()}" for n, k in done.items()) + ".")
        print()
    report_order(out, choices)


def report_order(out: Path, choices: dict[str, str]) -> None:
    """Every method on EmojiBench at its default today (for the grid methods their rule's choice, which became it),
    where finished: the methods' order, and the papers'."""
    rows = [(f"{m}: {chosen}", s) for m, chosen in choices.items()
            if chosen and (s := summary(out / "emojibench" / m / slug(chosen), m))]
    rows += [(f"{m}: {name}", s) for m, name in ZERO_SHOT.items()
             if (s := summary(out / "emojibench" / m / slug(name), m))]
    missing = [m for m in [*choices, *ZERO_SHOT] if not any(name.startswith(f"{m}: ") for name, _ in rows)]
    print("### EmojiBench: every method at its default on the built-in model today\n")
    if rows:
        table(rows, None)
    if missing:
        print(("\n" if rows else "") + f"Not finished yet: {', '.join(missing)} (`python benchmarks/fair.py --stage emojibench`).")
    print()
    report_papers({name.split(": ")[0]: s for name, s in rows})


# DreamBench's published scores (real DINO ViT-S/16 and CLIP ViT-B/32 on real photos), as pairs measured in one paper
# on one base model: only their order compares with the built-in world's, whose evaluators are not on that scale.
# (method a, method b, the source, {metric: (a's, b's)}); a gap under TIE is a tie there. The values are the papers'
# tables (DreamBooth's Table 1; SuTI's row as later papers reprint it: 0.741 / 0.819 / 0.304).
PAPERS = [
    ("dreambooth", "textual-inversion", "Ruiz et al. 2023, Table 1, both on Stable Diffusion",
     {"DINO": (0.668, 0.569), "CLIP-T": (0.305, 0.255)}),
    ("apprentice", "dreambooth", "Chen et al. 2023 (SuTI), both on Imagen",
     {"DINO": (0.741, 0.696), "CLIP-T": (0.304, 0.306)}),
]
TIE = 0.005


def report_papers(ours: dict[str, dict]) -> None:
    """Each pair of methods a paper orders, against the order here."""
    rows = [(a, b, source, metric, theirs) for a, b, source, scores in PAPERS if a in ours and b in ours
            for metric, theirs in scores.items()]
    if not rows:
        return
    print("The papers' order on DreamBench against this one (LoRA and ProFusion are in neither table):\n")
    print("| pair | metric | the paper | here | the same order |\n|---|---|---|---|---|")
    for a, b, source, metric, (pa, pb) in rows:
        key = {"DINO": "dino", "CLIP-T": "clip_t"}[metric]
        here = ours[a][key] - ours[b][key]
        same = "– (a tie there)" if abs(pa - pb) < TIE else "yes" if (pa - pb) * here > 0 else "**no**"
        print(f"| {a} – {b} ({source}) | {metric} | {pa:.3f} – {pb:.3f} | {ours[a][key]:.3f} – {ours[b][key]:.3f} | "
              f"{same} |")
    print()
    if "apprentice" in ours and "dreambooth" in ours:
        explain_apprentice(ours["apprentice"], ours["dreambooth"])


def explain_apprentice(apprentice: dict, dreambooth: dict) -> None:
    """Why SuTI's place against DreamBooth is or is not reproduced here: the size of what the apprentice imitated."""
    from subjectgen.assets import builtin_path

    farm = json.loads((builtin_path("apprentice", "builtin") / "training.json").read_text())["farm"]
    print(f"SuTI's apprentice imitated millions of experts, one per image cluster mined from the web (Chen et al. 2023); "
          f"the shipped one imitated {farm['experts']} experts of the world's farm ({farm['kept']} of their "
          f"{farm['images']} images kept by the ΔCLIP filter; its training.json): over "
          f"{10 ** 6 // farm['experts']:,} times fewer experts, taking a million for 'millions' (the apprentice's "
          "section below measures its likeness against the number of experts, 16 to 64). At this size it is "
          f"{'below' if apprentice['dino'] < dreambooth['dino'] else 'above'} DreamBooth on DINO "
          f"({apprentice['dino']:.3f} against {dreambooth['dino']:.3f}) and follows the prompt "
          f"{'less' if apprentice['clip_t'] < dreambooth['clip_t'] else 'more'} (CLIP-T {apprentice['clip_t']:.3f} "
          f"against {dreambooth['clip_t']:.3f}, where the paper has a tie).\n")


if __name__ == "__main__":
    main()
