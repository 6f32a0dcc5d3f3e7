"""seglake-explain: why is this user in that segment?

Reads the Delta tables through the registry's Arrow reader (jobs/tables.py: the Delta log
through deltalake, no Spark needed) and prints, for one
user of a succeeded run: the segment and its name, the distance to its centroid, the
runner-up segment and the margin between them, the user's own words that match the
segment's distinctive terms (and the words its lexical centre points at), and what the segment recommends (the user's own list from
user_recommendations when the run wrote it, else the segment's list).

    seglake-explain --output lakehouse --user u0000042 [--run-id demo]
"""
from __future__ import annotations

import argparse
import sys

import pyarrow.compute as pc

from jobs.tables import Lake, latest_succeeded_run


def _lake(output: str) -> Lake:
    return Lake(None, output, "delta-rs")


def explain(output: str, user_id: str, run_id: str | None = None) -> dict:
    """The explanation as a dict (see the module docstring)."""
    run_id = run_id or latest_succeeded_run(output)
    lake = _lake(output)
    users = lake.arrow("user_segments", run_id)
    row = users.filter(pc.equal(users["user_id"], user_id))
    if row.num_rows == 0:
        raise LookupError(f"user {user_id!r} is not in run {run_id} (quarantined rows are in {output}/quarantine)")
    u = row.to_pylist()[0]
    table = lake.arrow("segments", run_id)  # (lexical_terms: absent in runs before the lexical channel)
    segs = {s["segment_id"]: s for s in table.select([c for c in ("segment_id", "name", "size", "top_terms",
                                                                  "lexical_terms") if c in table.column_names])
            .to_pylist()}
    noise = {"name": "noise (far from every segment)", "size": None, "top_terms": [], "lexical_terms": []}
    own, second = segs.get(u["segment_id"], noise), segs.get(u["second_segment_id"])
    return {
        "run_id": run_id, "user_id": user_id,
        "segment_id": u["segment_id"], "segment_name": own["name"], "segment_size": own["size"],
        "distance": u["distance"],
        "second_segment_id": u["second_segment_id"], "second_segment_name": second["name"] if second else None,
        "second_distance": u["second_distance"], "margin": u["margin"],
        "matched_terms": u["matched_terms"] or [], "segment_terms": own["top_terms"] or [],
        "segment_lexical_terms": own.get("lexical_terms") or [],
        "n_texts": u["n_texts"], "n_events": u["n_events"],
        # (absent in runs from before soft memberships and outliers)
        "memberships": list(zip(u.get("top_segment_ids") or [], u.get("memberships") or [])),
        "outlier": bool(u.get("outlier")),
        **_recommended(output, run_id, user_id, u["segment_id"]),
    }


def _recommended(output: str, run_id: str, user_id: str, segment_id: int, n: int = 10) -> dict:
    """{"recommended": the first n item ids, "recommended_from": which table} (empty when the
    run wrote no recommendations: it had no events)."""
    lake = _lake(output)
    for table, col, value in (("user_recommendations", "user_id", user_id),
                              ("segment_recommendations", "segment_id", segment_id)):
        if lake.exists(table):
            rows = lake.arrow(table, run_id, [col, "rank", "item_id"])
            rows = rows.filter(pc.equal(rows[col], value)).sort_by("rank")
            if rows.num_rows:
                return {"recommended": rows["item_id"].to_pylist()[:n], "recommended_from": table}
    return {"recommended": [], "recommended_from": None}


def render(e: dict) -> str:
    lines = [
        f"user {e['user_id']} (run {e['run_id']}; {e['n_texts']} texts, {e['n_events']} events)",
        f"  segment   {e['segment_id']}: {e['segment_name']}"
        + (f" ({e['segment_size']} users)" if e["segment_size"] is not None else ""),
        f"  distance  {e['distance']:.4f} to its centroid" + ("; an outlier, beyond most of its segment" if e.get("outlier") else ""),
    ]
    if e.get("memberships"):
        lines.append("  membership " + ", ".join(f"{sid}: {p:.0%}" for sid, p in e["memberships"]))
    if e["second_segment_id"] is not None:
        lines.append(f"  runner-up {e['second_segment_id']}: {e['second_segment_name']} at {e['second_distance']:.4f} "
                     f"(margin {e['margin']:.4f}{'; borderline' if e['margin'] < 0.05 * e['second_distance'] else ''})")
    words = ", ".join(e["matched_terms"]) or "none (placed by behaviour and overall wording)"
    lines.append(f"  matching segment terms: {words}")
    lines.append(f"  segment terms: {', '.join(e['segment_terms'][:10])}")
    if e.get("segment_lexical_terms"):
        lines.append(f"  words the clustering weighed (lexical channel): {', '.join(e['segment_lexical_terms'][:10])}")
    if e.get("recommended"):
        whose = "for this user" if e["recommended_from"] == "user_recommendations" else "the segment's list"
        lines.append(f"  recommended ({whose}): {', '.join(e['recommended'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="seglake-explain", description="Explain one user's segment.")
    p.add_argument("--output", default="lakehouse", help="output root of the segmentation job (default lakehouse)")
    p.add_argument("--user", required=True, help="user_id to explain")
    p.add_argument("--run-id", help="run to read (default: the latest succeeded run)")
    p.add_argument("--key-source", help="tables with pseudonymous ids: --user is the raw id, hashed with the key "
                                        "from here (env:NAME, as privacy.key_source)")
    args = p.parse_args(argv)
    try:
        user = args.user
        if args.key_source:
            from jobs.privacy import pseudonym, user_id_key

            user = pseudonym(user, user_id_key(args.key_source))
        print(render(explain(args.output, user, args.run_id)))
    except (LookupError, FileNotFoundError, ValueError) as exc:
        print(f"seglake-explain: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
