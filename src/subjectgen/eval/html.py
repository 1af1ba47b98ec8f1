"""The pieces of the HTML reports (bench and demo): one stylesheet, labelled images, metric tables that say
which way is better and what the reference rows mean. Pages are single files; images sit beside them."""

from __future__ import annotations

import html

STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1d2330;background:#f5f6f8;margin:0}
main{max-width:1180px;margin:0 auto;padding:24px 28px 64px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:19px;margin:32px 0 10px}h3{font-size:16px;margin:20px 0 6px}
.lede{color:#4a5263;margin:0 0 18px}.card{background:#fff;border-radius:10px;padding:16px 18px;margin:14px 0;
box-shadow:0 1px 3px rgba(20,30,50,.12)}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}th,td{padding:5px 12px;text-align:right}
th{font-weight:600;border-bottom:2px solid #d5d9e0;white-space:nowrap}td{border-bottom:1px solid #eceef2}
th:first-child,td:first-child{text-align:left}tr.ref td{color:#5b6475;font-style:italic}
.best{font-weight:700;color:#0b6b3a}.note{color:#5b6475;font-size:13px;max-width:880px}
.strip{display:flex;flex-wrap:wrap;gap:10px}figure{margin:0;text-align:center}
figure img{image-rendering:pixelated;border-radius:6px;background:#dde1e7;display:block}
figcaption{font-size:12px;color:#4a5263;max-width:140px;margin-top:3px;line-height:1.25}
.row{display:grid;grid-template-columns:220px 1fr;gap:12px;align-items:start;padding:8px 0;
border-bottom:1px solid #eceef2}.row .label{font-size:13px}.tag{display:inline-block;font-size:12px;
padding:1px 7px;border-radius:9px;background:#e8ecf3;margin-right:6px}a{color:#1f5fbf}
.plots img{max-width:48%;background:#fff;border-radius:8px}
"""

ARROWS = {"dino": "DINO ↑", "clip_i": "CLIP-I ↑", "clip_t": "CLIP-T ↑"}
LEGEND = ("↑ higher is better. <b>DINO</b> and <b>CLIP-I</b>: how much the images look like the subject's photos "
          "(cosine similarity with every photo); <b>CLIP-T</b>: how well they follow the prompt (with the "
          "identifier removed). <b>baseline</b>: the model before personalization, given the class prompt — where a "
          "method starts. <b>oracle</b>: each real photo against the others — the likeness of the subject itself. "
          "<b>perfect</b> (world-made benchmarks): the world's own render of the subject in each prompt's scene — "
          "likeness a method can reach while following the prompt. <b>gain</b>: the share of the way from baseline "
          "to perfect on DINO; above 1 a method copies the photos instead of placing the subject in the scene.")


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def page(title: str, parts: list[str]) -> str:
    return (f"<!doctype html><html lang='en'><meta charset='utf-8'><meta name='viewport' "
            f"content='width=device-width,initial-scale=1'><title>{esc(title)}</title><style>{STYLE}</style>"
            f"<main>{''.join(parts)}</main></html>")


def figure(src: str, caption: str, size: int = 128) -> str:
    return (f"<figure><img src='{esc(src)}' width='{size}' height='{size}' alt='{esc(caption)}'>"
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def strip(figures: list[str]) -> str:
    return f"<div class='strip'>{''.join(figures)}</div>"


def fmt(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def metric_table(rows: dict[str, dict], extra: dict[str, callable] | None = None,
                 references: tuple = ("oracle", "baseline", "perfect"), baseline: str = "baseline") -> str:
    """Rows of DINO / CLIP-I / CLIP-T with arrows; per column the best method in bold, and only when it is
    better than the `baseline` row (where there is one): a method that lost to the base model is never marked
    best; reference rows in italics; `extra` adds columns: header -> function of the row's dict giving its cell."""
    extra = extra or {}
    methods = [m for m in rows if m not in references]
    best = {k: max((rows[m][k] for m in methods if rows[m].get(k) is not None), default=None) for k in ARROWS}
    floor = rows.get(baseline, {})
    best = {k: v if v is None or floor.get(k) is None or v > floor[k] else None for k, v in best.items()}
    head = "<tr><th></th>" + "".join(f"<th>{h}</th>" for h in ARROWS.values()) + \
        "".join(f"<th>{esc(h)}</th>" for h in extra) + "</tr>"
    body = []
    for name, s in rows.items():
        bold = {k: name in methods and s.get(k) is not None and s.get(k) == best[k] for k in ARROWS}
        cells = "".join(f"<td class='{'best' if bold[k] else ''}'>{fmt(s.get(k))}</td>" for k in ARROWS)
        cells += "".join(f"<td>{esc(f(s))}</td>" for f in extra.values())
        body.append(f"<tr class='{'ref' if name in references else ''}'><td>{esc(name)}</td>{cells}</tr>")
    return f"<table>{head}{''.join(body)}</table><p class='note'>{LEGEND}</p>"
