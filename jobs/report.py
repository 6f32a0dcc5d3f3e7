"""A self-contained HTML report of one segmentation run.

``render_report`` turns plain Python values (the run's facts, the k-selection curve, the segment
profiles and a 2-D projection of users) into one HTML string with no external resources at all:
plots are PNGs drawn with matplotlib's Agg renderer and embedded as ``data:`` URIs, the CSS is
inline, there are no fonts to download and no links out. A Content-Security-Policy meta tag
allows only ``data:`` images, inline styles and the one inline script of the report (by hash), so
even a text that slipped through escaping could neither run a script nor load anything.

Everything that comes from users (texts, terms, names, user ids, categories) is HTML-escaped.
The output is deterministic: the same inputs give the same bytes (fixed matplotlib style, no
render timestamps, no PNG software/date metadata).
"""
from __future__ import annotations

import base64
import hashlib
import html
import io
import logging
import math
import numbers
import os
import re
from datetime import date, datetime
from functools import lru_cache
from itertools import zip_longest
from typing import Any, Iterable

__all__ = ["render_report", "write_report"]

# --------------------------------------------------------------------------------------------
# small formatting helpers
# --------------------------------------------------------------------------------------------

DASH = "\u2014"
DOT = " \u00b7 "
TIMES = "\u00d7"
_SCHEME_RE = re.compile(r"(?i)\b(https?|ftp|wss?|file)(:)(?=//)")
MAX_TEXT_CHARS = 1200  # a representative text longer than this is cut (with an ellipsis)


def _esc(value: Any) -> str:
    """HTML-escape anything (None -> dash). URL schemes are written with an entity for the
    colon, so the page shows user text as it is but the file never holds a literal URL."""
    if value is None:
        return DASH
    text = html.escape(str(value), quote=True)
    return _SCHEME_RE.sub(r"\1&#58;", text)


def _is_num(v: Any) -> bool:
    if v is None or isinstance(v, bool):
        return False
    if isinstance(v, numbers.Real):
        try:
            return math.isfinite(float(v))
        except (TypeError, ValueError, OverflowError):
            return False
    return False


def _f(v: Any) -> float | None:
    """A finite float, or None."""
    if _is_num(v):
        return float(v)
    if isinstance(v, str):
        try:
            x = float(v)
        except ValueError:
            return None
        return x if math.isfinite(x) else None
    return None


def _num(v: Any, digits: int = 3) -> str:
    x = _f(v)
    return DASH if x is None else f"{x:,.{digits}f}"


def _int(v: Any) -> str:
    x = _f(v)
    return DASH if x is None else f"{int(round(x)):,}"


def _pct(v: Any, digits: int = 1) -> str:
    x = _f(v)
    return DASH if x is None else f"{x * 100:.{digits}f}%"


def _when(v: Any) -> str:
    if v is None:
        return DASH
    if isinstance(v, datetime):
        return v.isoformat(sep=" ", timespec="seconds")
    if isinstance(v, date):
        return v.isoformat()
    parsed = _as_datetime(v)
    return parsed.isoformat(sep=" ", timespec="seconds") if parsed is not None else str(v)


def _as_datetime(v: Any) -> datetime | None:
    if isinstance(v, datetime):
        return v
    if isinstance(v, str) and v.strip():
        try:
            return datetime.fromisoformat(v.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
    return None


def _duration(start: Any, end: Any) -> str | None:
    a, b = _as_datetime(start), _as_datetime(end)
    if a is None or b is None or (a.tzinfo is None) != (b.tzinfo is None):
        return None
    s = (b - a).total_seconds()
    if s < 0:
        return None
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m} min {sec} s"
    h, m = divmod(m, 60)
    return f"{h} h {m} min"


def _seconds(v: Any) -> str:
    x = _f(v)
    return DASH if x is None else f"{x:,.1f} s"


def _list(v: Any) -> list:
    if v is None:
        return []
    if isinstance(v, (str, bytes)):
        return [v]
    try:
        return list(v)
    except TypeError:
        return [v]


def _sid(v: Any) -> Any:
    """Segment ids as plain ints where they are integral (numpy ints, 3.0), else as given."""
    x = _f(v)
    if x is not None and x == int(x):
        return int(x)
    return v


def _sort_key(v: Any) -> tuple:
    x = _f(v)
    return (0, x, "") if x is not None else (1, 0.0, str(v))


def _short(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1].rstrip() + "\u2026"


# --------------------------------------------------------------------------------------------
# colours: one per segment, the same in every plot and card
# --------------------------------------------------------------------------------------------

_TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
          "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


def _palette(n: int) -> list[str]:
    if n <= 10:
        return _TAB10[:n]
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    names = ["tab20"] if n <= 20 else ["tab20", "tab20b", "tab20c"]
    base = [to_hex(c) for name in names for c in colormaps[name].colors]
    return [base[i % len(base)] for i in range(n)]


# --------------------------------------------------------------------------------------------
# matplotlib: fixed style, fonts with CJK fallback when one is installed, PNG data URIs
# --------------------------------------------------------------------------------------------

_CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans SC", "Source Han Sans SC",
              "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Droid Sans Fallback", "AR PL UMing CN",
              "Microsoft YaHei", "SimHei", "PingFang SC", "Heiti SC", "Arial Unicode MS")
DPI = 100


@lru_cache(maxsize=1)
def _font_families() -> tuple[str, ...]:
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    fams = ["DejaVu Sans"]
    for name in _CJK_FONTS:
        if name in installed:
            fams.append(name)
            break
    return tuple(fams)


@lru_cache(maxsize=1)
def _covered_codepoints() -> frozenset[int]:
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    cps: set[int] = set()
    for fam in _font_families():
        try:
            path = font_manager.findfont(font_manager.FontProperties(family=fam), fallback_to_default=False)
            cps.update(FT2Font(path).get_charmap().keys())
        except Exception:  # noqa: BLE001 - a font that cannot be read covers nothing
            continue
    return frozenset(cps)


def _plot_label(text: str) -> str:
    """A label matplotlib can draw with the installed fonts: each run of characters that no
    font covers becomes one '□' (the HTML around the plot always shows the full text)."""
    covered = _covered_codepoints()
    out, missing = [], False
    for ch in str(text):
        if ord(ch) in covered or ch.isspace():
            out.append(ch)
            missing = False
        elif not missing:
            out.append("\u25a1")
            missing = True
    return "".join(out)


def _rc() -> dict:
    return {
        # a list of families: matplotlib falls back glyph by glyph (DejaVu first, then a CJK font)
        "font.family": list(_font_families()),
        "font.size": 9,
        "axes.titlesize": 10,
        "axes.titleweight": "bold",
        "axes.labelsize": 9,
        "xtick.labelsize": 8,
        "ytick.labelsize": 8,
        "legend.fontsize": 8,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.alpha": 0.35,
        "grid.linewidth": 0.6,
        "axes.axisbelow": True,
        "axes.edgecolor": "#888888",
        "figure.dpi": DPI,
        "savefig.dpi": DPI,
        "figure.facecolor": "white",
        "savefig.facecolor": "white",
        "text.usetex": False,
        "text.parse_math": False,  # '$' in a term or name is text, never mathtext
        "svg.hashsalt": "seglake",
        "path.simplify": True,
    }


class _quiet_font_manager:
    """CJK fonts often have no 'normal' (400) weight: matplotlib then logs a findfont warning on
    every figure. Raise that logger's level while drawing, and put it back afterwards."""

    def __enter__(self):
        self._log = logging.getLogger("matplotlib.font_manager")
        self._level = self._log.level
        self._log.setLevel(max(self._level, logging.ERROR))

    def __exit__(self, *exc):
        self._log.setLevel(self._level)


class _Plot:
    """A figure drawn in a fixed style, without pyplot (no global figure state)."""

    def __init__(self, width_in: float, height_in: float, nrows: int = 1, ncols: int = 1, **kw):
        import matplotlib.style
        from matplotlib import rc_context

        self._ctx = [matplotlib.style.context("default"), rc_context(_rc()), _quiet_font_manager()]
        for c in self._ctx:
            c.__enter__()
        from matplotlib.figure import Figure

        self.fig = Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")
        axes = self.fig.subplots(nrows, ncols, squeeze=False, **kw)
        self.axes = [ax for row in axes for ax in row]

    def data_uri(self) -> tuple[str, int, int]:
        try:
            buf = io.BytesIO()
            self.fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
        finally:
            for c in reversed(self._ctx):
                c.__exit__(None, None, None)
        png = buf.getvalue()
        w, h = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
        return "data:image/png;base64," + base64.b64encode(png).decode("ascii"), w, h


def _img(uri_wh: tuple[str, int, int], alt: str, cls: str = "plot") -> str:
    uri, w, h = uri_wh
    return (f'<img class="{cls}" src="{uri}" width="{w}" height="{h}" alt="{_esc(alt)}" '
            f'decoding="sync">')


# ---- the plots ---------------------------------------------------------------------------------

_K_METRICS = (
    ("silhouette", "Silhouette (higher is better)"),
    ("davies_bouldin", "Davies\u2013Bouldin (lower is better)"),
    ("calinski_harabasz", "Calinski\u2013Harabasz (higher is better)"),
    ("wssse", "WSSSE (look for the elbow)"),
)


def _plot_k_selection(rows: list[dict], chosen_k: Any) -> tuple[str, int, int]:
    rows = sorted((r for r in rows if _f(r.get("k")) is not None), key=lambda r: _f(r["k"]))
    ks = [_f(r["k"]) for r in rows]
    p = _Plot(10, 6.2, 2, 2)
    for ax, (key, title) in zip(p.axes, _K_METRICS):
        ys = [_f(r.get(key)) for r in rows]
        ax.set_title(title, loc="left")
        ax.set_xlabel("k")
        if ks:
            ax.set_xticks(ks)
            ax.set_xticklabels([str(int(k)) if k == int(k) else f"{k:g}" for k in ks])
        if not any(y is not None for y in ys):
            ax.text(0.5, 0.5, "not computed", transform=ax.transAxes, ha="center", va="center",
                    color="#888888")
            ax.set_yticks([])
            continue
        ax.plot(ks, [math.nan if y is None else y for y in ys], color="#1f77b4", marker="o",
                markersize=4, linewidth=1.6)
        ck = _f(chosen_k)
        if ck is not None and ks and min(ks) <= ck <= max(ks):
            ax.axvline(ck, color="#d62728", linestyle="--", linewidth=1)
            for k, y in zip(ks, ys):
                if k == ck and y is not None:
                    ax.plot([k], [y], marker="*", markersize=13, color="#d62728", linestyle="none",
                            label=f"chosen k = {int(k) if k == int(k) else k}")
                    ax.legend(loc="best", frameon=False)
    return p.data_uri()


def _seg_label(seg: dict, n: int = 48) -> str:
    name = seg.get("name")
    name = _short(name, n) if name not in (None, "") else ""
    return f"S{seg['segment_id']}" + (f" \u00b7 {name}" if name else "")


def _plot_sizes(segs: list[dict], colors: dict) -> tuple[str, int, int]:
    n = len(segs)
    p = _Plot(10, max(2.2, 0.32 * n + 1.0))
    ax = p.axes[0]
    ys = list(range(n))
    sizes = [_f(s.get("size")) or 0.0 for s in segs]
    ax.barh(ys, sizes, color=[colors[s["segment_id"]] for s in segs], height=0.72)
    ax.set_yticks(ys)
    ax.set_yticklabels([_plot_label(_seg_label(s)) for s in segs])
    ax.invert_yaxis()
    ax.set_ylim(n - 0.5, -0.5)
    ax.grid(axis="y", visible=False)
    ax.set_xlabel("users")
    ax.set_title("Segment sizes", loc="left")
    top = max(sizes) if sizes else 0.0
    ax.set_xlim(0, top * 1.16 if top > 0 else 1)
    for y, s, size in zip(ys, segs, sizes):
        share = _f(s.get("share"))
        txt = f"{int(size):,}" + (f"  ({share * 100:.1f}%)" if share is not None else "")
        ax.text(size + top * 0.01, y, txt, va="center", ha="left", fontsize=7.5, color="#333333")
    return p.data_uri()


def _plot_projection(points: list[dict], order: list, colors: dict, names: dict) -> tuple[str, int, int]:
    by_seg: dict[Any, tuple[list[float], list[float]]] = {}
    for pt in points:
        x, y = _f(pt.get("x")), _f(pt.get("y"))
        if x is None or y is None:
            continue
        xs, ys = by_seg.setdefault(_sid(pt.get("segment_id")), ([], []))
        xs.append(x)
        ys.append(y)
    seg_ids = [sid for sid in order if sid in by_seg]
    n = len(seg_ids)
    p = _Plot(10, 6.6)
    ax = p.axes[0]
    many = n > 14
    for sid in seg_ids:
        xs, ys = by_seg[sid]
        label = f"S{sid}" if many else _plot_label(f"S{sid} \u00b7 {_short(names.get(sid) or '', 30)}"
                                                  if names.get(sid) else f"S{sid}")
        ax.scatter(xs, ys, s=9, color=colors[sid], alpha=0.75, linewidths=0, label=label)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    total = sum(len(v[0]) for v in by_seg.values())
    ax.set_title(f"Users projected on the first two principal components ({total:,} shown)", loc="left")
    if n:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, markerscale=2.2,
                  ncol=1 if n <= 20 else 2, handletextpad=0.3, columnspacing=0.8, borderaxespad=0)
    return p.data_uri()


_BEHAVIOUR = (
    ("events_per_user", "Events per user", "{:,.1f}", 1.0),
    ("purchase_share", "Purchase share", "{:.1f}%", 100.0),
    ("mean_rating", "Mean rating", "{:.2f}", 1.0),
)


def _plot_behaviour(segs: list[dict], colors: dict) -> tuple[str, int, int] | None:
    panels = [m for m in _BEHAVIOUR if any(_f(s.get(m[0])) is not None for s in segs)]
    if not segs or not panels:
        return None
    n = len(segs)
    p = _Plot(10, max(2.2, 0.3 * n + 1.1), 1, len(panels), sharey=True)
    ys = list(range(n))
    for i, (ax, (key, title, fmt, scale)) in enumerate(zip(p.axes, panels)):
        vals = [_f(s.get(key)) for s in segs]
        present = [(y, v * scale, colors[s["segment_id"]]) for y, v, s in zip(ys, vals, segs) if v is not None]
        ax.barh([t[0] for t in present], [t[1] for t in present], color=[t[2] for t in present], height=0.7)
        top = max([t[1] for t in present] + [0.0])
        if key == "mean_rating":
            top = max(top, 5.0)
        ax.set_xlim(0, top * 1.28 if top > 0 else 1)
        for y, v in zip(ys, vals):
            if v is None:
                ax.text(top * 0.02 if top > 0 else 0.02, y, "n/a", va="center", ha="left", fontsize=7.5,
                        color="#999999", style="italic")
            else:
                ax.text(v * scale + top * 0.015, y, fmt.format(v * scale), va="center", ha="left",
                        fontsize=7.5, color="#333333")
        ax.set_title(title, loc="left")
        ax.grid(axis="y", visible=False)
        if i == 0:
            ax.set_yticks(ys)
            ax.set_yticklabels([f"S{s['segment_id']}" for s in segs])
        ax.set_ylim(n - 0.5, -0.5)
    return p.data_uri()


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------

_CSS = """
:root{--fg:#1d2430;--muted:#5b6573;--line:#e3e7ee;--bg:#f5f7fa;--card:#fff;--accent:#2458a6}
*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%}
body{margin:0;background:var(--bg);color:var(--fg);font:14px/1.5 system-ui,-apple-system,"Segoe UI",
Roboto,"Noto Sans","Helvetica Neue",Arial,"Noto Sans CJK SC","Source Han Sans SC","PingFang SC",
"Microsoft YaHei","WenQuanYi Zen Hei",sans-serif}
main{max-width:1180px;margin:0 auto;padding:24px 28px 48px}
header.top{background:#1d2b45;color:#fff;padding:22px 28px}
header.top .inner{max-width:1180px;margin:0 auto}
header.top h1{margin:0;font-size:22px;font-weight:650}
header.top .sub{color:#c5d0e3;margin-top:4px;font-size:13px}
header.top code{color:#fff}
nav.toc{margin-top:10px;font-size:13px}
nav.toc a{color:#c5d0e3;margin-right:14px;text-decoration:none}
nav.toc a:hover{color:#fff;text-decoration:underline}
h2{font-size:18px;margin:32px 0 12px;padding-bottom:6px;border-bottom:2px solid var(--line)}
h3{font-size:15px;margin:0}
h4{font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:var(--muted);margin:14px 0 6px}
.banner{border-radius:8px;padding:12px 16px;margin:18px 0 0;font-size:14px}
.banner.warn{background:#fdecea;border:1px solid #f1a9a0;color:#7d1a10}
.banner.ok{background:#e8f5ec;border:1px solid #a9d8b8;color:#1d5e31}
.banner.info{background:#eef2f8;border:1px solid #cdd7e6;color:#33425a}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:10px}
.fact{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:9px 12px;min-width:0}
.fact .k{font-size:11px;text-transform:uppercase;letter-spacing:.04em;color:var(--muted)}
.fact .v{font-size:17px;font-weight:600;overflow-wrap:anywhere}
.fact .v.small{font-size:13px;font-weight:500}
.fact .h{font-size:11px;color:var(--muted)}
.panel{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:14px 16px;margin:12px 0}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:16px}
@media (max-width:860px){.cols{grid-template-columns:1fr}}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid var(--line);vertical-align:top}
th{font-size:11px;text-transform:uppercase;letter-spacing:.04em;color:var(--muted);font-weight:600}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.chosen td{background:#fff6e0;font-weight:600}
tfoot td{font-weight:600}
.bar{height:8px;background:#e9edf3;border-radius:4px;min-width:60px;overflow:hidden}
.bar>span{display:block;height:100%;background:var(--accent);border-radius:4px}
img.plot{display:block;max-width:100%;height:auto;margin:6px auto}
.sw{display:inline-block;width:11px;height:11px;border-radius:3px;vertical-align:-1px;margin-right:6px}
.seg{background:var(--card);border:1px solid var(--line);border-left:6px solid #999;border-radius:8px;
padding:14px 18px;margin:14px 0;break-inside:avoid}
.seg .meta{color:var(--muted);font-size:13px;margin-top:3px}
.seg .meta b{color:var(--fg)}
blockquote{margin:0 0 8px;padding:7px 11px;background:#f7f8fb;border-left:3px solid #cfd6e2;
border-radius:4px;white-space:pre-wrap;overflow-wrap:anywhere;font-size:13px}
.chips{display:flex;flex-wrap:wrap;gap:6px}
.chip{font:12px/1.6 ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",monospace;background:#eef2f8;
border:1px solid #d8e0ec;border-radius:12px;padding:0 8px;overflow-wrap:anywhere}
.muted{color:var(--muted)}
.none{color:var(--muted);font-style:italic}
a{color:var(--accent)}
footer{color:var(--muted);font-size:12px;margin-top:36px;border-top:1px solid var(--line);padding-top:10px}
@media print{body{background:#fff}header.top{background:#fff;color:#000}.seg,.panel{break-inside:avoid}}
"""

# Sets data-images-ok / data-images-count on <body> once everything has loaded (tests read it).
_SCRIPT = (
    "window.addEventListener('load',function(){"
    "var imgs=Array.prototype.slice.call(document.images);"
    "var ok=imgs.every(function(im){return im.complete&&im.naturalWidth>0;});"
    "document.body.dataset.imagesOk=ok?'true':'false';"
    "document.body.dataset.imagesCount=String(imgs.length);"
    "});"
)


def _fact(label: str, value: str, hint: str = "", small: bool = False) -> str:
    h = f'<div class="h">{hint}</div>' if hint else ""
    cls = "v small" if small else "v"
    return f'<div class="fact"><div class="k">{_esc(label)}</div><div class="{cls}">{value}</div>{h}</div>'


def _bar(frac: float | None, color: str | None = None) -> str:
    if frac is None:
        return ""
    w = max(0.0, min(1.0, frac)) * 100
    style = f"width:{w:.1f}%" + (f";background:{color}" if color else "")
    return f'<div class="bar"><span style="{style}"></span></div>'


def _header(run: dict) -> str:
    run_id = run.get("run_id")
    dur = _duration(run.get("started_at"), run.get("finished_at"))
    sub = (f"run <code>{_esc(run_id)}</code> \u00b7 started {_esc(_when(run.get('started_at')))}"
           f" \u00b7 finished {_esc(_when(run.get('finished_at')))}"
           + (f" \u00b7 took {_esc(dur)}" if dur else ""))
    toc = ("<nav class=\"toc\"><a href=\"#quality\">Quality</a><a href=\"#inputs\">Inputs</a>"
           "<a href=\"#k-selection\">k selection</a><a href=\"#overview\">Segments</a>"
           "<a href=\"#segments\">Segment cards</a><a href=\"#timings\">Timings</a></nav>")
    return (f'<header class="top"><div class="inner"><h1>SegLake segmentation report</h1>'
            f'<div class="sub">{sub}</div>{toc}</div></header>')


def _stability_banner(run: dict) -> str:
    stable, ari = run.get("stable"), _f(run.get("stability_ari"))
    ari_txt = f" (stability ARI {ari:.3f})" if ari is not None else ""
    if stable is False:
        return ('<div class="banner warn" role="alert" id="unstable-warning"><b>\u26a0 Unstable segmentation'
                f'{ari_txt}.</b> Re-running the clustering with other seeds gave substantially different '
                'segments: treat the segments, their sizes and names below as tentative, and consider another '
                'k, more data or a different feature weighting.</div>')
    if stable is True:
        return f'<div class="banner ok">Stable segmentation{ari_txt}: reruns with other seeds agree.</div>'
    if ari is not None:
        return f'<div class="banner info">Stability ARI {ari:.3f} (no stability verdict recorded).</div>'
    return '<div class="banner info">Stability was not computed for this run.</div>'


def _quality(run: dict) -> str:
    facts = [
        _fact("algorithm", _esc(run.get("algorithm")), small=False),
        _fact("distance", _esc(run.get("distance"))),
        _fact("k (segments)", _int(run.get("k"))),
        _fact("silhouette", _num(run.get("silhouette"), 4), "\u22121..1, higher is better"),
        _fact("Davies\u2013Bouldin", _num(run.get("davies_bouldin"), 3), "lower is better"),
        _fact("Calinski\u2013Harabasz", _num(run.get("calinski_harabasz"), 1), "higher is better"),
        _fact("WSSSE", _num(run.get("wssse"), 1), "within-cluster cost"),
        _fact("smallest segment", _pct(run.get("min_share"))),
        _fact("largest segment", _pct(run.get("max_share"))),
        _fact("size entropy", _num(run.get("size_entropy"), 3), "1 = equal sizes"),
        _fact("stability ARI", _num(run.get("stability_ari"), 3),
              "not computed" if _f(run.get("stability_ari")) is None else "reruns agree at 1"),
        _fact("embedding model", _esc(run.get("embedding_model")), small=True),
    ]
    return (f'<section id="quality"><h2>Run and quality</h2>{_stability_banner(run)}'
            f'<div class="grid" style="margin-top:14px">{"".join(facts)}</div></section>')


def _inputs(run: dict) -> str:
    tr, tk = _f(run.get("texts_read")), _f(run.get("texts_kept"))
    er, ek = _f(run.get("events_read")), _f(run.get("events_kept"))
    rows = [("texts", tr, tk)]
    if run.get("events_read") is not None or run.get("events_kept") is not None:
        rows.append(("events", er, ek))
    body = []
    for name, r, k in rows:
        q = (r - k) if (r is not None and k is not None) else None
        body.append(f"<tr><td>{name}</td><td class=\"n\">{_int(r)}</td><td class=\"n\">{_int(k)}</td>"
                    f"<td class=\"n\">{_int(q)}</td><td class=\"n\">{_pct(q / r if q is not None and r else None)}"
                    "</td></tr>")
    if len(rows) == 1:
        body.append('<tr><td>events</td><td colspan="4" class="none">no events input (texts only)</td></tr>')
    counts = ('<table><thead><tr><th>input</th><th class="n">read</th><th class="n">kept</th>'
              '<th class="n">quarantined</th><th class="n">rate</th></tr></thead><tbody>'
              + "".join(body) + "</tbody></table>")
    reasons = run.get("quarantine_reasons") or {}
    items = sorted(((str(k), _f(v) or 0.0) for k, v in dict(reasons).items()), key=lambda kv: (-kv[1], kv[0]))
    if items:
        top = max(v for _, v in items) or 1.0
        rtab = ('<table><thead><tr><th>reason</th><th class="n">rows</th><th></th></tr></thead><tbody>'
                + "".join(f"<tr><td>{_esc(k)}</td><td class=\"n\">{_int(v)}</td><td style=\"width:35%\">"
                          f"{_bar(v / top, '#c0504d')}</td></tr>" for k, v in items)
                + f'</tbody><tfoot><tr><td>total quarantined</td><td class="n">{_int(run.get("quarantined"))}'
                  '</td><td></td></tr></tfoot></table>')
    else:
        rtab = ('<p class="none">No rows quarantined.</p>' if not _f(run.get("quarantined"))
                else f'<p>{_int(run.get("quarantined"))} rows quarantined (no reasons recorded).</p>')
    facts = "".join([
        _fact("users segmented", _int(run.get("users"))),
        _fact("users with texts only", _int(run.get("users_text_only"))),
        _fact("users with events only", _int(run.get("users_events_only"))),
        _fact("embedding speed", (f"{_f(run.get('embed_texts_per_s')):,.0f} texts/s"
                                  if _f(run.get("embed_texts_per_s")) is not None else DASH)),
    ])
    return (f'<section id="inputs"><h2>Inputs</h2><div class="grid">{facts}</div>'
            f'<div class="cols"><div class="panel"><h4>Rows</h4>{counts}</div>'
            f'<div class="panel"><h4>Quarantine reasons</h4>{rtab}</div></div></section>')


def _k_selection(run: dict, rows: list[dict]) -> str:
    if not rows:
        return ('<section id="k-selection"><h2>Choice of k</h2><p class="muted">k was given '
                f'(k = {_int(run.get("k"))}); no other k was tried.</p></section>')
    langs = list(dict.fromkeys(r.get("lang") for r in rows))
    if langs == [None]:
        return f'<section id="k-selection"><h2>Choice of k</h2>{_k_sweep(run, rows)}</section>'
    # cluster.per_language: one sweep per main language (OTHER "*": every other user)
    parts = [f'<h3>Main language {_esc("other" if lang == "*" else lang)}</h3>'
             + _k_sweep(run, [r for r in rows if r.get("lang") == lang]) for lang in langs]
    return ('<section id="k-selection"><h2>Choice of k</h2><p class="muted">Segments are found within each '
            f'main language, each with its own k.</p>{"".join(parts)}</section>')


def _k_sweep(run: dict, rows: list[dict]) -> str:
    chosen = [r for r in rows if r.get("chosen") is True]
    chosen_k = chosen[0].get("k") if chosen else run.get("k")
    plot = _img(_plot_k_selection(rows, chosen_k), "Clustering quality metrics against k, chosen k marked")
    srt = sorted(rows, key=lambda r: _sort_key(r.get("k")))
    ck = _f(chosen_k)
    trs = []
    chosen_cls, chosen_mark = ' class="chosen"', " \u2190 chosen"
    for r in srt:
        is_chosen = r.get("chosen") is True or (not chosen and ck is not None and _f(r.get("k")) == ck)
        trs.append(
            f'<tr{chosen_cls if is_chosen else ""}><td class="n">{_int(r.get("k"))}'
            f'{chosen_mark if is_chosen else ""}</td>'
            f'<td class="n">{_num(r.get("silhouette"), 4)}</td><td class="n">{_num(r.get("davies_bouldin"), 3)}</td>'
            f'<td class="n">{_num(r.get("calinski_harabasz"), 1)}</td><td class="n">{_num(r.get("wssse"), 1)}</td>'
            f'<td class="n">{_pct(r.get("min_share"))}</td><td class="n">{_pct(r.get("max_share"))}</td>'
            f'<td class="n">{_num(r.get("size_entropy"), 3)}</td><td class="n">{_int(r.get("sample_size"))}</td></tr>')
    table = ('<table><thead><tr><th class="n">k</th><th class="n">silhouette</th><th class="n">Davies\u2013Bouldin</th>'
             '<th class="n">Calinski\u2013Harabasz</th><th class="n">WSSSE</th><th class="n">min share</th>'
             '<th class="n">max share</th><th class="n">size entropy</th><th class="n">sample</th></tr></thead>'
             f'<tbody>{"".join(trs)}</tbody></table>')
    return f'<div class="panel">{plot}</div><div class="panel">{table}</div>'


def _overview(segs: list[dict], colors: dict, names: dict, projection: list[dict], order: list) -> str:
    if not segs:
        return '<section id="overview"><h2>Segments</h2><p class="none">No segments.</p></section>'
    parts = [f'<div class="panel">{_img(_plot_sizes(segs, colors), "Segment sizes")}</div>']
    if any(_f(p.get("x")) is not None and _f(p.get("y")) is not None for p in projection):
        parts.append(f'<div class="panel">{_img(_plot_projection(projection, order, colors, names), "2-D projection of users coloured by segment")}</div>')
    else:
        parts.append('<div class="panel"><p class="none">No projection of users available.</p></div>')
    beh = _plot_behaviour(segs, colors)
    if beh is not None:
        parts.append(f'<div class="panel"><h4>Behaviour by segment</h4>{_img(beh, "Behaviour comparison per segment")}</div>')
    rows = []
    for s in segs:
        sid = s["segment_id"]
        parent = s.get("parent_segment_id")
        cats = ", ".join(_esc(c) for c in _list(s.get("top_categories"))[:3]) or DASH
        rows.append(
            f'<tr><td class="n"><a href="#seg-{_esc(sid)}">S{_esc(sid)}</a></td>'
            f'<td><span class="sw" style="background:{colors[sid]}"></span>{_esc(s.get("name") or "")}</td>'
            f'<td class="n">{_int(s.get("size"))}</td><td class="n">{_pct(s.get("share"))}</td>'
            f'<td class="n">{_num(s.get("texts_per_user"), 1)}</td><td class="n">{_num(s.get("events_per_user"), 1)}</td>'
            f'<td class="n">{_pct(s.get("purchase_share"))}</td><td class="n">{_num(s.get("mean_rating"), 2)}</td>'
            f'<td>{cats}</td><td class="n">{"S" + _esc(_sid(parent)) if parent is not None else DASH}</td></tr>')
    table = ('<table><thead><tr><th class="n">id</th><th>name</th><th class="n">users</th><th class="n">share</th>'
             '<th class="n">texts/user</th><th class="n">events/user</th><th class="n">purchase share</th>'
             '<th class="n">mean rating</th><th>top categories</th><th class="n">parent</th></tr></thead>'
             f'<tbody>{"".join(rows)}</tbody></table>')
    parts.append(f'<div class="panel">{table}</div>')
    return f'<section id="overview"><h2>Segments</h2>{"".join(parts)}</section>'


def _segment_card(s: dict, color: str, names: dict) -> str:
    sid = s["segment_id"]
    parent = s.get("parent_segment_id")
    meta = [f'<b>{_int(s.get("size"))}</b> users \u00b7 <b>{_pct(s.get("share"))}</b> of all']
    if parent is not None:
        pid = _sid(parent)
        pname = names.get(pid)
        ref = f'<a href="#seg-{_esc(pid)}">S{_esc(pid)}</a>' if pid in names else f"S{_esc(pid)}"
        meta.append(f"parent {ref}" + (f" {_esc(pname)}" if pname else ""))
    beh = []
    for key, label, digits in (("texts_per_user", "texts/user", 1), ("events_per_user", "events/user", 1)):
        if _f(s.get(key)) is not None:
            beh.append(f"{label} <b>{_num(s.get(key), digits)}</b>")
    if _f(s.get("purchase_share")) is not None:
        beh.append(f"purchase share <b>{_pct(s.get('purchase_share'))}</b>")
    if _f(s.get("mean_rating")) is not None:
        beh.append(f"mean rating <b>{_num(s.get('mean_rating'), 2)}</b>")
    if beh:
        meta.append(" \u00b7 ".join(beh))

    terms = _list(s.get("top_terms"))
    scores = _list(s.get("term_scores"))
    fs = [_f(x) for x in scores]
    top = max([x for x in fs if x is not None] + [0.0])
    if terms:
        trs = "".join(
            f'<tr><td>{_esc(t)}</td><td class="n">{_num(sc, 3)}</td><td style="width:40%">'
            f'{_bar((_f(sc) or 0.0) / top if top > 0 and _f(sc) is not None else None, color)}</td></tr>'
            for t, sc in zip_longest(terms, scores[: len(terms)]))
        kw = f'<table><thead><tr><th>term</th><th class="n">score</th><th></th></tr></thead><tbody>{trs}</tbody></table>'
    else:
        kw = '<p class="none">No keywords.</p>'

    cats = _list(s.get("top_categories"))
    shares, lifts = _list(s.get("top_category_shares")), _list(s.get("top_category_lifts"))
    if cats:
        crs = "".join(
            f'<tr><td>{_esc(c)}</td><td class="n">{_pct(sh)}</td><td class="n">'
            f'{(_num(li, 2) + TIMES) if _f(li) is not None else DASH}</td></tr>'
            for c, sh, li in zip_longest(cats, shares[: len(cats)], lifts[: len(cats)]))
        ct = ('<table><thead><tr><th>category</th><th class="n">share</th><th class="n">lift</th></tr></thead>'
              f'<tbody>{crs}</tbody></table>')
    else:
        ct = '<p class="none">No category data.</p>'

    texts = [t for t in _list(s.get("representative_texts")) if t is not None]
    if texts:
        rt = "".join(f"<blockquote>{_esc(_short_keep_lines(str(t), MAX_TEXT_CHARS))}</blockquote>" for t in texts)
    else:
        rt = '<p class="none">No representative texts.</p>'
    users = [u for u in _list(s.get("typical_users")) if u is not None]
    chips = "".join(f'<span class="chip">{_esc(u)}</span>' for u in users)
    tu = (f'<div class="chips">{chips}</div>'
          if users else '<p class="none">No typical users.</p>')
    items = [i for i in _list(s.get("top_items")) if i is not None]
    rec = ("<h4>Recommends (top items)</h4>"
           + f'<div class="chips">{"".join(f"<span class=chip>{_esc(i)}</span>" for i in items)}</div>'
           if items else "")
    title = _esc(s.get("name")) if s.get("name") not in (None, "") else f"Segment {_esc(sid)}"
    return (f'<article class="seg" id="seg-{_esc(sid)}" style="border-left-color:{color}">'
            f'<h3><span class="sw" style="background:{color}"></span>S{_esc(sid)} \u00b7 {title}</h3>'
            f'<div class="meta">{DOT.join(meta)}</div>'
            f'<div class="cols"><div><h4>Keywords</h4>{kw}<h4>Top categories</h4>{ct}</div>'
            f'<div><h4>Representative texts</h4>{rt}<h4>Typical users</h4>{tu}{rec}</div></div></article>')


def _short_keep_lines(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1].rstrip() + "\u2026"


def _timings(run: dict) -> str:
    st = run.get("stage_seconds") or {}
    items = [(str(k), _f(v)) for k, v in dict(st).items()]
    if not items:
        return '<section id="timings"><h2>Stage timings</h2><p class="none">No timings recorded.</p></section>'
    total = sum(v for _, v in items if v is not None)
    top = max([v for _, v in items if v is not None] + [0.0])
    trs = "".join(
        f'<tr><td>{_esc(k)}</td><td class="n">{_seconds(v)}</td>'
        f'<td class="n">{_pct(v / total if v is not None and total > 0 else None)}</td>'
        f'<td style="width:45%">{_bar(v / top if v is not None and top > 0 else None)}</td></tr>'
        for k, v in items)
    eps = _f(run.get("embed_texts_per_s"))
    note = f'<p class="muted">Embedding throughput: {eps:,.1f} texts/s.</p>' if eps is not None else ""
    return ('<section id="timings"><h2>Stage timings</h2><div class="panel"><table><thead><tr><th>stage</th>'
            '<th class="n">time</th><th class="n">share</th><th></th></tr></thead>'
            f'<tbody>{trs}</tbody><tfoot><tr><td>total</td><td class="n">{_seconds(total)}</td><td></td><td></td>'
            f'</tr></tfoot></table>{note}</div></section>')


def _changes(changes: dict | None, names: dict) -> str:
    """Changes since the last run: each segment's relation to the previous run's (same, split,
    merged, new, retired), its size then and now, and the largest moves of users between ids."""
    if not changes:
        return ""
    head = f'<section id="changes"><h2>Changes since the last run</h2><p class="muted">{_esc(changes.get("note"))}</p>'
    rows = changes.get("lineage") or []
    if not changes.get("previous_run_id"):
        return head + "</section>"
    before = changes.get("previous_sizes") or {}
    trs = "".join(
        f'<tr><td class="n">{_esc(r["segment_id"])}</td><td>{_esc(names.get(r["segment_id"], ""))}</td>'
        f'<td>{_esc(r["relation"])}</td><td>{_esc(", ".join(str(i) for i in (r.get("previous_ids") or [])))}</td>'
        f'<td class="n">{_int(before.get(r["segment_id"]))}</td>'
        f'<td class="n">{_int(r["size"]) if r["relation"] != "retired" else "–"}</td>'
        f'<td>{_esc(", ".join(str(i) for i in (r.get("successor_ids") or [])))}</td></tr>'
        for r in sorted(rows, key=lambda r: (r["relation"] == "retired", r["segment_id"])))
    moves = sorted((m for m in changes.get("moves") or [] if m["from"] != m["to"]), key=lambda m: -m["users"])[:10]
    mv = "".join(f'<tr><td class="n">{_esc(m["from"])}</td><td class="n">{_esc(m["to"])}</td>'
                 f'<td class="n">{_int(m["users"])}</td></tr>' for m in moves)
    kept = changes.get("kept_share")
    return (head + f'<p>Of the users in both runs, {_pct(kept)} kept their segment id.</p>' if kept is not None else head) + (
        '<div class="panel"><table><thead><tr><th class="n">segment</th><th>name</th><th>relation</th>'
        '<th>previous ids</th><th class="n">users then</th><th class="n">users now</th><th>went to</th></tr></thead>'
        f'<tbody>{trs}</tbody></table></div>'
        + ('<h3>Largest moves between segments</h3><div class="panel"><table><thead><tr><th class="n">from</th>'
           f'<th class="n">to</th><th class="n">users</th></tr></thead><tbody>{mv}</tbody></table></div>' if mv else "")
        + "</section>")


def _normalise_segments(segments: Iterable[dict]) -> list[dict]:
    segs = []
    for s in segments or []:
        s = dict(s)
        s["segment_id"] = _sid(s.get("segment_id"))
        segs.append(s)
    segs.sort(key=lambda s: _sort_key(s["segment_id"]))
    return segs


def render_report(run: dict, k_selection: list[dict], segments: list[dict], projection: list[dict],
                  changes: dict | None = None) -> str:
    """The whole report as one HTML string (no external resources at all: no CDN, no fonts, no http(s) URLs)."""
    run = dict(run or {})
    k_selection = [dict(r) for r in (k_selection or [])]
    projection = list(projection or [])
    segs = _normalise_segments(segments)

    order = [s["segment_id"] for s in segs]
    extra = sorted({_sid(p.get("segment_id")) for p in projection} - set(order), key=_sort_key)
    order += extra
    palette = _palette(len(order))
    colors = dict(zip(order, palette))
    names = {s["segment_id"]: (s.get("name") or "") for s in segs}

    script_hash = base64.b64encode(hashlib.sha256(_SCRIPT.encode("utf-8")).digest()).decode("ascii")
    csp = (f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'; "
           "base-uri 'none'; form-action 'none'")
    cards = "".join(_segment_card(s, colors[s["segment_id"]], names) for s in segs) or '<p class="none">No segments.</p>'
    body = "".join([
        _header(run),
        "<main>",
        _quality(run),
        _inputs(run),
        _k_selection(run, k_selection),
        _overview(segs, colors, names, projection, order),
        _changes(changes, names),
        f'<section id="segments"><h2>Segment cards</h2>{cards}</section>',
        _timings(run),
        f'<footer>SegLake \u00b7 run {_esc(run.get("run_id"))} \u00b7 self-contained report: '
        "no external resources; user texts are shown as text.</footer>",
        "</main>",
    ])
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{csp}\">\n"
        "<meta name=\"referrer\" content=\"no-referrer\">\n"
        f"<title>SegLake report \u00b7 {_esc(run.get('run_id'))}</title>\n"
        f"<style>{_CSS}</style>\n</head>\n"
        "<body data-images-ok=\"pending\" data-images-count=\"0\">\n"
        f"{body}\n<script>{_SCRIPT}</script>\n</body>\n</html>\n"
    )


def write_report(html: str, path: str) -> str:
    """Write it (creating parent folders; local path) and return the absolute path."""
    p = str(path)
    if p.startswith("file://"):
        p = p[len("file://"):]
    elif p.startswith("file:"):
        p = p[len("file:"):]
    p = os.path.abspath(os.path.expanduser(p))
    parent = os.path.dirname(p)
    if parent:
        os.makedirs(parent, exist_ok=True)
    tmp = f"{p}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(html)
    os.replace(tmp, p)
    return p
