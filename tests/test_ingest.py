"""Ingest + clean: column mapping, missing-column errors, quarantine reasons, counts."""
import json

import pytest
from pyspark.sql import functions as F

from jobs import ingest
from jobs.clean import clean_texts
from jobs.config import EVENT_COLUMNS, TEXT_COLUMNS

TEXT_MAP = {c: c for c in TEXT_COLUMNS["required"] + TEXT_COLUMNS["optional"]}
EVENT_MAP = {c: c for c in EVENT_COLUMNS["required"] + EVENT_COLUMNS["optional"]}


def _texts(spark, path, fmt="csv", mapping=TEXT_MAP):
    raw = ingest.read_source(spark, str(path), fmt, name="texts")
    return (raw.transform(ingest.map_columns, mapping, TEXT_COLUMNS, str(path), "texts")
            .transform(ingest.validate_texts).transform(clean_texts, 256))


def _reasons(df):
    return {r.user_id or "": r.reason for r in df.select("user_id", "reason").collect()}


def test_text_reasons_and_reconciliation(spark, tmp_path):
    p = tmp_path / "texts.csv"
    p.write_text(
        "user_id,text,ts,item_id,lang\n"
        "u1,Great dress,2026-01-02T03:04:05Z,i1,en\n"
        ",orphan text,2026-01-02,i1,en\n"
        "u3,,2026-01-02,,en\n"
        "u4,<p></p>,2026-01-02,,en\n"
        "u5,fine text,not-a-date,,en\n"
        "u6,\"multi, comma <b>text</b> mail a@b.com\",,,EN\n"
        "u7,这件连衣裙很舒服,2026-13-45,,zh\n"
        "  ,spaces only id,,,en\n"
        "\u3000\u00a0,ideographic space id,,,en\n",
        encoding="utf-8")
    df = _texts(spark, p).cache()
    reasons = {r.text: r.reason for r in df.collect()}
    assert reasons["Great dress"] is None
    assert reasons["orphan text"] == "missing_user_id"
    assert reasons[None] == "missing_text"  # empty CSV field reads as null
    assert reasons["<p></p>"] == "empty_after_cleaning"
    assert reasons["fine text"] == "unparsable_ts"
    assert reasons["这件连衣裙很舒服"] == "unparsable_ts"
    assert reasons["spaces only id"] == reasons["ideographic space id"] == "missing_user_id"
    good = df.where("user_id = 'u6'").first()
    assert good.reason is None and good.text_clean == "multi, comma text mail [EMAIL]" and good.lang == "en"
    assert df.where("user_id = 'u1'").first().ts is not None
    kept, bad = ingest.split_quarantine(df)
    assert kept.count() + bad.count() == df.count() == 9
    q = ingest.to_quarantine(bad, "texts", str(p), "r1").collect()
    assert {r.reason for r in q} == {"missing_user_id", "missing_text", "empty_after_cleaning", "unparsable_ts"}
    rec = json.loads(next(r.record for r in q if r.reason == "unparsable_ts" and "fine" in r.record))
    assert rec["user_id"] == "u5" and rec["ts"] == "not-a-date"
    assert all(r.run_id == "r1" and r.input == "texts" and r.source == str(p) for r in q)


def test_malformed_json_line_is_quarantined(spark, tmp_path):
    p = tmp_path / "texts.json"
    p.write_text('{"user_id": "u1", "text": "good"}\n{"user_id": "u2", "text": \n{"user_id": 3, "text": "num id"}\n')
    df = _texts(spark, p, "json")
    rows = sorted((r.reason or "", r.user_id or "") for r in df.collect())
    assert rows == [("", "3"), ("", "u1"), ("malformed_record", "")]
    _, bad = ingest.split_quarantine(df)
    assert '"text": ' in ingest.to_quarantine(bad, "texts", str(p), "r").first().record  # the raw line is kept


def test_column_mapping_and_missing_column_error(spark, tmp_path):
    p = tmp_path / "t.parquet"
    spark.createDataFrame([("a", "hello there", "x")], "uid string, body string, extra string").write.parquet(str(p))
    mapping = {**TEXT_MAP, "user_id": "uid", "text": "body"}
    row = _texts(spark, p, "parquet", mapping).first()
    assert (row.user_id, row.text_clean, row.ts, row.reason) == ("a", "hello there", None, None)
    with pytest.raises(ingest.InputError, match=r"t\.parquet: required column 'text'"):
        _texts(spark, p, "parquet", {**TEXT_MAP, "user_id": "uid"})


def test_missing_file_is_a_clear_error(spark, tmp_path):
    with pytest.raises(ingest.InputError, match="events input not found"):
        ingest.read_source(spark, str(tmp_path / "nope.csv"), "csv", name="events")


def test_catalog_table_input(spark):
    """format `table`: an input by table name (Unity Catalog's catalog.schema.table on Databricks;
    a temporary view here), validated like a file."""
    spark.createDataFrame([("a", "hello there"), ("", "orphan")], "user_id string, text string") \
        .createOrReplaceTempView("seglake_test_texts")
    rows = {r.user_id: r.reason for r in _texts(spark, "seglake_test_texts", "table").collect()}
    assert rows == {"a": None, "": "missing_user_id"}
    with pytest.raises(ingest.InputError, match="texts input table not found: main.raw.nope"):
        ingest.read_source(spark, "main.raw.nope", "table", name="texts")


def test_event_reasons(spark, tmp_path):
    p = tmp_path / "events.csv"
    p.write_text(
        "user_id,item_id,event_type,rating,category,ts\n"
        "u1,i1,VIEW,,fashion,2026-01-01T00:00:00Z\n"
        "u1,i2,rating,4.5,fashion,2026-01-01\n"
        "u2,i1,rating,7,fashion,\n"
        "u2,i1,rating,0,fashion,\n"
        "u2,i1,rating,great,fashion,\n"
        "u3,i1,like,,fashion,\n"
        ",i1,view,,fashion,\n"
        "u4,,view,,fashion,\n"
        "u5,i1,click,,books,yesterday\n")
    raw = ingest.read_source(spark, str(p), "csv", name="events")
    df = (raw.transform(ingest.map_columns, EVENT_MAP, EVENT_COLUMNS, str(p), "events")
          .transform(ingest.validate_events, None, (1.0, 5.0)))
    got = sorted((r.reason or "ok") for r in df.collect())
    assert got == sorted(["ok", "ok", "rating_out_of_range", "rating_out_of_range", "invalid_rating",
                          "unknown_event_type", "missing_user_id", "missing_item_id", "unparsable_ts"])
    ok = df.where(F.col("reason").isNull()).orderBy("item_id").collect()
    assert [(r.event_type, r.rating) for r in ok] == [("view", None), ("rating", 4.5)]


def test_small_inputs_run_with_settings_sized_to_them_and_put_back(spark):
    """spark.small_input_rows: a small full run turns adaptive execution off and uses one
    shuffle partition per core until the run ends; a larger input keeps the profile's settings."""
    from jobs import config
    from jobs.pipeline import RunContext, fit_to_input

    keys = ("spark.sql.adaptive.enabled", "spark.sql.shuffle.partitions")
    before = {k: spark.conf.get(k) for k in keys}
    spark.conf.set("spark.sql.adaptive.enabled", "true")
    spark.conf.set("spark.sql.shuffle.partitions", "8")
    try:
        conf = config.load(None, {"spark": {"small_input_rows": 1000}, "input": {"texts": {"path": "t.csv"}}})
        big = RunContext(spark, conf, "r1", lake=None)
        big.counts.update(texts_kept=900, events_kept=101)
        fit_to_input(big)
        assert [spark.conf.get(k) for k in keys] == ["true", "8"]  # 1,001 rows: not small
        small = RunContext(spark, conf, "r2", lake=None)
        small.counts.update(texts_kept=900, events_kept=100)
        fit_to_input(small)
        cores = str(spark.sparkContext.defaultParallelism)
        assert [spark.conf.get(k) for k in keys] == ["false", cores]
        small.release()
        assert [spark.conf.get(k) for k in keys] == ["true", "8"]
        off = RunContext(spark, config.load(None, {"spark": {"small_input_rows": 0}, "input": {"texts": {"path": "t.csv"}}}), "r3", lake=None)
        off.counts.update(texts_kept=1)
        fit_to_input(off)
        assert spark.conf.get("spark.sql.adaptive.enabled") == "true"
        with pytest.raises(config.ConfigError, match="spark.small_input_rows"):
            config.load(None, {"spark": {"small_input_rows": -1}, "input": {"texts": {"path": "t.csv"}}})
    finally:
        for k, v in before.items():
            spark.conf.set(k, v)
