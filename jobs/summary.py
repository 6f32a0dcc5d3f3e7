"""What a full run tells people: the end-of-run summary on the console, the run's facts (the
runs row and the report header share them) and the HTML report beside the tables."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from jobs import ingest
from udfs.embedding import resolve_model_path

QUALITY = ("wssse", "davies_bouldin", "calinski_harabasz", "min_share", "max_share", "size_entropy")


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
                 f"{c['texts_embedded_distinct']} distinct texts: {c.get('texts_embedded_new', 0)} embedded"
                 + (f" at {res.embed_texts_per_s:.0f} texts/s" if c.get("texts_embedded_new") else "")
                 + (f", {c['texts_embedding_cache_hits']} from the embedding cache"
                    if c.get("texts_embedding_cache_hits") else ""))
    if res.k_selection:
        lines.append("k selection on a sample (best silhouette, then the smallest k within tolerance):")
        prev_lang = None
        lines.append(f"    {'k':>3} {'silhouette':>10} {'Davies-B.':>9} {'Calinski-H.':>11} {'min share':>9}")
        for s in res.k_selection:
            mark = "  <- chosen" if s.get("chosen") else ""
            lang = s.get("lang")
            if lang is not None and lang != prev_lang:
                lines.append(f"  main language {'other' if lang == '*' else lang}:")
            prev_lang = lang
            lines.append(f"    {s['k']:>3} {s['silhouette']:>10.4f} {s['davies_bouldin']:>9.3f} "
                         f"{s['calinski_harabasz']:>11.1f} {s['min_share']:>9.1%}{mark}")
    q = res.quality
    lines.append(f"k = {res.k}: silhouette {res.silhouette:.4f}, Davies-Bouldin {q.get('davies_bouldin', float('nan')):.3f}, "
                 f"Calinski-Harabasz {q.get('calinski_harabasz', float('nan')):.1f}, WSSSE {q.get('wssse', float('nan')):.1f}, "
                 f"size entropy {q.get('size_entropy', float('nan')):.2f}")
    if q.get("stability_ari") is not None:
        verdict = "stable" if q.get("stable") else "UNSTABLE: segments depend on the seed"
        lines.append(f"stability: mean pairwise ARI across seeds {q['stability_ari']:.3f} ({verdict})")
    changes = getattr(res, "changes", None)
    if changes:
        lines.append(changes["note"])
        for r in changes.get("lineage") or []:
            if r["relation"] != "same" and changes.get("previous_run_id"):
                lines.append(f"    {r['relation']:<8} {r['segment_id']:>3}"
                             + (f" <- {', '.join(map(str, r['previous_ids']))}" if r["relation"] != "retired" and r["previous_ids"] else "")
                             + (f" -> {', '.join(map(str, r['successor_ids']))}" if r.get("successor_ids") else ""))
    if q.get("outliers") is not None:
        lines.append(f"outliers: {q['outliers']} users beyond their segment's distance quantile"
                     + (f" (noise, segment -1: {q['noise_share']:.1%} of users)" if q.get("noise_share") is not None else ""))
    lines.append("")
    lines.append(f"{'seg':>3} {'users':>6} {'share':>6}  name")
    for s in res.segments:
        lines.append(f"{s['segment_id']:>3} {s['size']:>6} {s['share']:>6.1%}  {s.get('name') or ''}")
        lines.append(f"{'':>19}terms: {', '.join((s.get('top_terms') or [])[:8])}")
        if s.get("top_items"):
            lines.append(f"{'':>19}recommends: {', '.join(s['top_items'])}")
    if c.get("segment_recommendations_rows") is not None:
        lines.append(f"recommendations: {c['segment_recommendations_rows']} segment rows"
                     + (f", {c['user_recommendations_rows']} user rows" if "user_recommendations_rows" in c else ""))
    lines.append("")
    lines += stage_table(res.stage_seconds)
    if getattr(res, "report_path", None):
        lines.append(f"report: {res.report_path}")
    if getattr(res, "tracking", None):
        t = res.tracking
        lines.append(f"MLflow: run {t['run_id']} in experiment {t['experiment']} ({t['uri']})")
    lines.append("tables:")
    names = getattr(res, "table_names", None) or {}
    for name, path in res.tables.items():
        lines.append(f"    {name:<24} {path}" + (f"  ({names[name]})" if name in names else ""))
    return "\n".join(lines)


def stage_table(seconds: dict[str, float]) -> list[str]:
    """Each stage's duration and share of the run, and the total."""
    total = sum(seconds.values()) or 1e-9
    lines = [f"{'stage':<14} {'seconds':>8} {'share':>6}"]
    lines += [f"{name:<14} {sec:>8.1f} {sec / total:>6.1%}" for name, sec in seconds.items()]
    lines.append(f"{'total':<14} {sum(seconds.values()):>8.1f}")
    return lines


def run_facts(conf: dict, res: Any, started: datetime) -> dict:
    """The run as plain values: the runs-table row and the report header share it."""
    try:
        embed_model = resolve_model_path(conf["embed"]["model_path"])
    except Exception:  # noqa: BLE001 - a bad model path is the error being recorded
        embed_model = conf["embed"]["model_path"]
    c, q = res.counts, res.quality
    return {
        "run_id": res.run_id, "started_at": started, "finished_at": datetime.now(timezone.utc),
        "texts_read": c.get("texts_read"), "texts_kept": c.get("texts_kept"),
        "events_read": c.get("events_read"), "events_kept": c.get("events_kept"),
        "quarantined": c.get("quarantined"), "quarantine_reasons": res.reasons,
        "texts_embedded_distinct": c.get("texts_embedded_distinct"),
        "texts_embedded_new": c.get("texts_embedded_new"),
        "users": c.get("users"), "users_text_only": c.get("users_text_only"),
        "users_events_only": c.get("users_events_only"),
        "algorithm": conf["cluster"]["algorithm"], "distance": conf["cluster"]["distance"],
        "k": res.k or None, "silhouette": res.silhouette, "cost": res.cost,
        **{m: q.get(m) for m in QUALITY}, "stability_ari": q.get("stability_ari"), "stable": q.get("stable"),
        "stage_seconds": res.stage_seconds, "embed_texts_per_s": res.embed_texts_per_s,
        "embedding_model": embed_model,
    }


def write_report(conf: dict, res: Any, started: datetime, projection: list[dict]) -> str | None:
    """The HTML report beside the tables: <output>/reports/<run_id>.html (output.report)."""
    if not conf["output"]["report"]:
        return None
    from jobs import report

    html = report.render_report(run_facts(conf, res, started), res.k_selection, res.segments, projection,
                                getattr(res, "changes", None))
    path = f"{res.output}/reports/{res.run_id}.html"
    if ingest.is_local_path(path):
        return report.write_report(html, path)
    from pyarrow import fs as pafs

    filesystem, inner = pafs.FileSystem.from_uri(path)
    filesystem.create_dir(inner.rsplit("/", 1)[0], recursive=True)
    with filesystem.open_output_stream(inner) as out:
        out.write(html.encode("utf-8"))
    return path
