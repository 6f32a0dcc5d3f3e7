"""The human-readable end-of-run summary."""
from __future__ import annotations

from typing import Any


def render(res: Any) -> str:
    """Plain text: counts, k choice, segment table, stage timings, output paths."""
    c = res.counts
    lines = [
        "",
        f"SegLake run {res.run_id}",
        "=" * 72,
        f"texts   read {c['texts_read']:>8}  kept {c['texts_kept']:>8}  quarantined "
        f"{c['texts_read'] - c['texts_kept']:>6}",
    ]
    if "events_read" in c:
        lines.append(f"events  read {c['events_read']:>8}  kept {c['events_kept']:>8}  quarantined "
                     f"{c['events_read'] - c['events_kept']:>6}")
    for reason, n in sorted(res.reasons.items()):
        lines.append(f"    {reason:<40} {n:>6}")
    lines.append(f"users {c['users']} ({c.get('users_text_only', 0)} without events, "
                 f"{c.get('users_events_only', 0)} without texts); "
                 f"{c['texts_embedded_distinct']} distinct texts embedded at {res.embed_texts_per_s:.0f} texts/s")
    if res.k_selection:
        lines.append("k selection (silhouette on a sample; best wins):")
        for s in res.k_selection:
            mark = "  <- chosen" if s["k"] == res.k else ""
            lines.append(f"    k={s['k']:<3} silhouette {s['silhouette']:.4f}  cost {s['cost']:.1f}{mark}")
    lines.append(f"k = {res.k}, silhouette {res.silhouette:.4f}, cost {res.cost:.1f}")
    lines.append("")
    lines.append(f"{'seg':>3} {'users':>6} {'share':>6}  {'top categories':<24} top terms")
    for s in res.segments:
        cats = ", ".join(s.get("top_categories") or [])[:24]
        terms = ", ".join((s.get("top_terms") or [])[:6])
        lines.append(f"{s['segment_id']:>3} {s['size']:>6} {s['share']:>6.1%}  {cats:<24} {terms}")
    lines.append("")
    lines.append("stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in res.stage_seconds.items()))
    lines.append("tables:")
    for name, path in res.tables.items():
        lines.append(f"    {name:<14} {path}")
    return "\n".join(lines)
