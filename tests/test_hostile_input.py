"""Hostile and broken input: every bad row ends in a clear error or a quarantine row with a
reason, nothing is lost, and counts reconcile (rows read = rows kept + rows quarantined)."""
from __future__ import annotations

import json

import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F

from jobs import ingest
from jobs.clean import prepare_events, prepare_texts
from jobs.config import EVENT_COLUMNS, TEXT_COLUMNS
from jobs.cli import segment_main as main
from jobs.segment_users import run
from tests.conftest import local_conf

TEXT_MAP = {c: c for c in TEXT_COLUMNS["required"] + TEXT_COLUMNS["optional"]}
EVENT_MAP = {c: c for c in EVENT_COLUMNS["required"] + EVENT_COLUMNS["optional"]}
BOT_TEXTS = 5_000  # one user's texts: 5x ingest.max_texts_per_user (1,000) is enough to show the cap
LONELY_USERS = 600


def _table(path):
    return DeltaTable(str(path)).to_pandas()


def test_duplicates_and_per_user_cap(spark):
    rows = [("u1", "same text", "2026-01-03", "i1"), ("u1", "same text", "2026-01-03", "i1"),  # duplicate
            ("u1", "same text", "2026-01-04", "i1"),  # same words, another time: kept
            ("u1", "older", "2026-01-01", None), ("u1", "no ts", None, None), ("u1", "no ts", None, None),
            ("u2", "same text", "2026-01-03", "i1"),  # another user's copy is not a duplicate
            (None, "same text", "2026-01-03", "i1"), (None, "same text", "2026-01-03", "i1")]
    df = spark.createDataFrame(rows, "user_id string, text string, ts string, item_id string").withColumn(
        "lang", F.lit(None).cast("string")).withColumn(ingest.CORRUPT, F.lit(None).cast("string"))
    got = prepare_texts(df, max_per_user=3).select("user_id", "text", "ts", "reason").collect()
    by_reason: dict = {}
    for r in got:
        by_reason.setdefault(r.reason, []).append((r.user_id, r.text, r.ts and r.ts.day))
    # u1: 6 rows, 2 exact duplicates; of the 4 distinct ones the 3 most recent are kept and
    # rows without ts count as the oldest.
    assert sorted(by_reason["duplicate_row"], key=str) == [("u1", "no ts", None), ("u1", "same text", 3)]
    assert by_reason["over_user_cap"] == [("u1", "no ts", None)]
    assert sorted(by_reason[None], key=str) == [("u1", "older", 1), ("u1", "same text", 3), ("u1", "same text", 4),
                                                ("u2", "same text", 3)]
    assert by_reason["missing_user_id"] == [(None, "same text", 3)] * 2  # already rejected rows stay as they were
    assert len(got) == len(rows)
    # Off: everything usable is kept.
    assert prepare_texts(df, dedupe_rows=False).where("reason is null").count() == 7

    ev = spark.createDataFrame(
        [("u1", "i1", "view", None, "c", "2026-01-01T00:00:00"), ("u1", "i1", "view", None, "c", "2026-01-01T00:00:00"),
         ("u1", "i1", "view", None, "c", "2026-01-01T00:00:01"), ("u1", "i1", "rating", "4", "c", None),
         ("u1", "i1", "rating", "5", "c", None)],
        "user_id string, item_id string, event_type string, rating string, category string, ts string",
    ).withColumn(ingest.CORRUPT, F.lit(None).cast("string"))
    reasons = sorted((r.reason or "") for r in prepare_events(ev).collect())
    assert reasons == ["", "", "", "", "duplicate_row"]


def _bot_ts(i: int) -> str:
    """The bot's i-th text's time: one a second from 2026-01-01."""
    return f"2026-01-{1 + i // 86400:02d}T{(i // 3600) % 24:02d}:{(i // 60) % 60:02d}:{i % 60:02d}Z"


def _hostile_texts(path) -> dict:
    """A texts CSV with every kind of bad and odd row; returns what was planted."""
    long_text = ("very long review about a dress " * 40_000)[:1_000_000]  # 1 MB
    lines = [b"user_id,text,ts,item_id,lang,extra_col,another"]  # two extra columns: ignored

    def row(*fields) -> None:
        fields = (list(fields) + ["", ""])[:7]  # every row has the extra columns' fields too
        lines.append(",".join(fields).encode("utf-8"))

    planted = {"sql": "Robert'); DROP TABLE users; -- great dress", "script_secret": "steal_cookie_xyz"}
    row("s1", f'"{planted["sql"]}"', "2026-01-02T00:00:00Z", "i1", "en", "x", "y")
    row("s2", '"<p>nice <b>shirt</b></p><script>alert(\'steal_cookie_xyz\')</script>"', "2026-01-02", "i2", "en")
    row("s3", '"great 👗 dress 😀 非常好 fit size"', "2026-01-02", "i3", "zh")
    row("s4", '"bad\x01\x02control\x7f chars \u200b in a phone review"', "2026-01-02", "i4", "en")
    row("s5", f'"{long_text}"', "2026-01-02", "i5", "en")
    row("s6", '"select * from t where 1=1; laptop battery"', "not a timestamp", "i6", "en")  # bad ts
    row("", '"no user"', "2026-01-02", "i7", "en")  # missing id
    row("s7", "", "2026-01-02", "i8", "en")  # null text
    row("s8", '"<br/>"', "2026-01-02", "i9", "en")  # empty after cleaning
    row("s9", '"duplicate review of a phone"', "2026-01-02", "i1", "en")
    row("s9", '"duplicate review of a phone"', "2026-01-02", "i1", "en")
    lines.append(b's10,"invalid utf-8 \xff\xfe bytes in a phone review",2026-01-02,i1,en,,')
    for i in range(LONELY_USERS):  # very many users with one text each
        row(f"one{i:05d}", '"phone battery screen"' if i % 2 else '"dress shirt fabric"', "2026-01-03", "i1", "en")
    for i in range(BOT_TEXTS):  # one user (a bot) with very many texts
        row("bot", f'"great dress number {i}"', _bot_ts(i), "i1", "en")
    path.write_bytes(b"\n".join(lines) + b"\n")
    return planted


def _hostile_events(path) -> None:
    lines = [
        {"user_id": "s1", "item_id": "i1", "event_type": "purchase", "category": "fashion", "ts": "2026-01-02",
         "unexpected": {"nested": [1, 2]}},
        {"user_id": "s1", "item_id": "i1", "event_type": "purchase", "category": "fashion", "ts": "2026-01-02"},
        {"user_id": "s2", "item_id": "i2", "event_type": "rating", "rating": "five", "category": "fashion"},
        {"user_id": "s2", "item_id": "i2", "event_type": "rating", "rating": 4, "category": "fashion"},
        {"user_id": 12345, "item_id": 6, "event_type": "view"},  # numbers where strings go
        {"user_id": None, "item_id": "i1", "event_type": "view"},
    ]
    text = "\n".join(json.dumps(x) for x in lines)
    text += '\n{"user_id": "s3", "item_id": "i3", "event_type": "vi\n{not json at all}\n'
    path.write_text(text + "\n", encoding="utf-8")


@pytest.mark.slow
def test_hostile_inputs_end_to_end(spark, tmp_path, tiny_model):
    planted = _hostile_texts(tmp_path / "texts.csv")
    _hostile_events(tmp_path / "events.json")
    lake = tmp_path / "lake"
    conf = local_conf({"output": {"root": str(lake)}}, run_id="h1", embed__model_path=tiny_model,
                      input__texts__path=str(tmp_path / "texts.csv"), input__events__path=str(tmp_path / "events.json"),
                      input__events__format="json", cluster__k=2, cluster__stability_seeds=0, output__report=False)
    res = run(spark, conf)
    c, reasons = res.counts, res.reasons
    n_rows = 12 + LONELY_USERS + BOT_TEXTS
    assert c["texts_read"] == n_rows and c["events_read"] == 8
    q = _table(lake / "quarantine")
    assert c["texts_read"] == c["texts_kept"] + (q.input == "texts").sum()
    assert c["events_read"] == c["events_kept"] + (q.input == "events").sum()
    assert reasons == {
        "texts:over_user_cap": BOT_TEXTS - 1000, "texts:duplicate_row": 1, "texts:unparsable_ts": 1,
        "texts:missing_user_id": 1, "texts:missing_text": 1, "texts:empty_after_cleaning": 1,
        "events:duplicate_row": 1, "events:invalid_rating": 1, "events:missing_user_id": 1,
        "events:malformed_record": 2,
    }
    us = _table(lake / "user_segments").set_index("user_id")
    assert us.loc["bot", "n_texts"] == 1000  # capped at ingest.max_texts_per_user, the most recent ones
    capped = q[(q.reason == "over_user_cap")].record.map(lambda r: json.loads(r)["ts"])
    assert capped.max() == _bot_ts(BOT_TEXTS - 1001)  # the capped rows are the oldest ones
    # Odd but valid texts are segmented, not dropped: SQL-looking text, emoji + mixed scripts,
    # control characters, invalid UTF-8, a 1 MB text, a number-typed JSON user id.
    for uid in ("s1", "s2", "s3", "s4", "s5", "s9", "s10", "12345", "one00000", f"one{LONELY_USERS - 1:05d}"):
        assert uid in us.index, uid
    assert len(us) == 9 + LONELY_USERS
    seg = _table(lake / "segments")
    blob = seg.astype(str).to_csv() + us.astype(str).to_csv()
    assert planted["script_secret"] not in blob  # script contents are never user text
    # The SQL-looking text is data: cleaned to itself (nothing escaped or stripped) and counted
    # as its user's one text.
    from udfs.text_clean import clean_text

    assert clean_text(planted["sql"]) == planted["sql"]
    state = _table(lake / "user_vectors")
    assert state.n_texts[state.user_id == "s1"].iloc[0] == 1


def test_empty_and_missing_inputs_are_clear_errors(spark, tmp_path, capsys):
    header_only = tmp_path / "empty.csv"
    header_only.write_text("user_id,text,ts\n", encoding="utf-8")
    out = str(tmp_path / "o")
    assert main(["--texts", str(header_only), "--no-events", "--output", out]) == 3
    assert "no usable texts" in capsys.readouterr().err
    zero = tmp_path / "zero.csv"
    zero.write_bytes(b"")
    assert main(["--texts", str(zero), "--no-events", "--output", out]) == 3
    assert "required column 'user_id'" in capsys.readouterr().err
    good = tmp_path / "t.csv"
    good.write_text("user_id,text\nu1,hello there\n", encoding="utf-8")
    assert main(["--texts", str(good), "--events", str(tmp_path / "missing.csv"), "--output", out]) == 3
    assert "events input not found" in capsys.readouterr().err
