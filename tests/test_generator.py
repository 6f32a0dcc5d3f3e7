"""Tests of the sample-data generator data/generate_sample.py (no Spark; a few seconds).

The committed sample must be exactly what the documented default command produces:

    python data/generate_sample.py --out data/sample --users 660 --seed 42
"""
from __future__ import annotations

import filecmp
import importlib.util
import json
import re
import sys
import unicodedata
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"


def _load_generator():
    name = "generate_sample"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "data" / "generate_sample.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # so that worker processes can unpickle its functions
    spec.loader.exec_module(module)
    return module


gen = _load_generator()

ITEM_ID = re.compile(r"^(%s)-\d{4,}$" % "|".join(gen.CATEGORIES))
FULLWIDTH = re.compile("[\uff10-\uff19\uff21-\uff3a\uff41-\uff5a]")  # full-width letters and digits
EMOJI = re.compile("[\U0001F300-\U0001FAFF\u2764\u2728]")


def _read_csv(path: Path) -> pd.DataFrame:
    # keep '' as '' (empty user_id / empty text): only truly missing CSV fields are ''
    return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")


def _valid_ts(ts: pd.Series) -> pd.Series:
    """True where ts is a real ISO-8601 UTC time like 2026-03-04T12:33:10Z."""
    return pd.to_datetime(ts, format="%Y-%m-%dT%H:%M:%SZ", errors="coerce").notna()


def _files(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A 240-user CSV data set (fixed seed) plus the stats the generator returned."""
    out = tmp_path_factory.mktemp("gen-small")
    stats = gen.generate(out, users=240, seed=7)
    return out, stats, _read_csv(out / "texts.csv"), _read_csv(out / "events.csv"), _read_csv(out / "labels.csv")


def test_same_seed_gives_identical_bytes(small, tmp_path):
    out, *_ = small
    gen.generate(tmp_path, users=240, seed=7)
    assert _files(tmp_path) == _files(out)
    other = tmp_path / "other-seed"
    gen.generate(other, users=240, seed=8)
    assert (other / "texts.csv").read_bytes() != (out / "texts.csv").read_bytes()


def test_workers_and_chunks_stream_identically(tmp_path):
    """Several blocks: the output does not depend on the number of worker processes."""
    one, two = tmp_path / "w1", tmp_path / "w2"
    gen.generate(one, users=300, seed=3, chunk_users=100, workers=1)
    gen.generate(two, users=300, seed=3, chunk_users=100, workers=2)
    assert _files(one) == _files(two)
    labels = _read_csv(one / "labels.csv")
    assert labels.user_id.tolist() == [f"u{i:07d}" for i in range(300)]
    assert (one / "texts.csv").read_text(encoding="utf-8").count("user_id,text,ts") == 1  # one header


def test_columns(small):
    out, _, texts, events, labels = small
    assert tuple(texts.columns) == ("user_id", "text", "ts", "item_id", "lang")
    assert tuple(events.columns) == ("user_id", "item_id", "event_type", "rating", "category", "ts")
    assert tuple(labels.columns) == ("user_id", "group", "lang")
    assert set(texts.lang) == {"en", "zh"}
    assert set(events.category) == set(gen.CATEGORIES)


def test_groups_languages_and_label_coverage(small):
    _, stats, texts, events, labels = small
    assert len(labels) == 240 == labels.user_id.nunique()
    assert set(labels.group) == set(gen.ALL_GROUPS)
    for group in gen.ALL_GROUPS:
        assert set(labels.lang[labels.group == group]) == {"en", "zh"}, group
    zh_share = (labels.lang == "zh").mean()
    assert 0.2 <= zh_share <= 0.3
    assert 0.04 <= (labels.group == "noise").mean() <= 0.08
    seen = (set(texts.user_id) | set(events.user_id)) - {""}
    assert seen <= set(labels.user_id)
    # a user writes in one language, the one of its label
    lang_by_user = labels.set_index("user_id").lang
    t = texts[texts.user_id != ""]
    assert (t.lang.values == lang_by_user.loc[t.user_id].values).all()
    # edge users: texts but no events, and events but no texts, both occur
    text_users, event_users = set(t.user_id), set(events.user_id) - {""}
    assert len(text_users - event_users) >= stats["users_without_events"] >= 1
    assert len(event_users - text_users) >= stats["users_without_texts"] >= 1


def test_texts_per_user(small):
    _, stats, texts, events, labels = small
    counts = texts[texts.user_id != ""].groupby("user_id").size()
    assert counts.max() <= 30
    orphaned = stats["dirty_texts"]["null_user_id"] + stats["dirty_texts"]["empty_user_id"]
    assert (counts < 5).sum() <= orphaned  # only users that lost rows to a blank user_id
    e_counts = events[events.user_id != ""].groupby("user_id").size()
    assert e_counts.max() <= 60
    assert (e_counts < 5).sum() <= stats["dirty_events"]["null_user_id"] + stats["dirty_events"]["empty_user_id"]


def test_dirty_rows_present(small):
    out, stats, texts, events, _ = small
    for kind in gen.TEXT_DIRTY_KINDS:
        assert stats["dirty_texts"][kind] >= 3, kind
    for kind in gen.EVENT_DIRTY_KINDS:
        assert stats["dirty_events"][kind] >= 3, kind
    text = texts.text
    assert text.str.contains("<script>alert(1)</script>", regex=False).any()
    assert text.str.contains(r"<(?:p|div|span|i|b)\b", regex=True).any()
    assert text.str.contains(r"&(?:amp|#39|quot|nbsp|ldquo|lt);", regex=True).any()
    assert (text == "").sum() >= stats["dirty_texts"]["empty_text"]
    assert (text.str.len().gt(0) & text.str.strip().eq("")).sum() == stats["dirty_texts"]["whitespace_only"]
    assert text.str.fullmatch(r"(https?://|www\.)\S+").sum() == stats["dirty_texts"]["url_only"]
    assert text.map(lambda s: bool(FULLWIDTH.search(s))).sum() >= stats["dirty_texts"]["fullwidth"]
    assert text.map(lambda s: bool(EMOJI.search(s))).sum() >= stats["dirty_texts"]["emoji"]
    assert texts.user_id.eq("").sum() == stats["dirty_texts"]["null_user_id"] + stats["dirty_texts"]["empty_user_id"]
    bad_ts = ~_valid_ts(texts.ts)
    assert bad_ts.sum() == stats["dirty_texts"]["bad_ts"] and set(texts.ts[bad_ts]) <= set(gen.BAD_TS)
    # events
    assert events.user_id.eq("").sum() == stats["dirty_events"]["null_user_id"] + stats["dirty_events"]["empty_user_id"]
    unknown = ~events.event_type.isin(gen.EVENT_TYPES)
    assert unknown.sum() == stats["dirty_events"]["unknown_event_type"]
    rated = events.rating != ""
    assert (events.event_type[rated] == "rating").all()  # ratings on rating events only
    r = events.rating[rated].astype(int)
    assert set(r[(r < 1) | (r > 5)]) <= {0, 7, -1, 6}
    assert ((r < 1) | (r > 5)).sum() == stats["dirty_events"]["rating_out_of_range"]
    bad_ets = ~_valid_ts(events.ts)
    assert bad_ets.sum() == stats["dirty_events"]["bad_ts"] and set(events.ts[bad_ets]) <= set(gen.BAD_TS)
    # every planted PII string is in some text and nowhere in the other files
    pii = (out / "planted_pii.txt").read_text(encoding="utf-8").splitlines()
    assert len(pii) == stats["planted_pii"] == sum(stats["dirty_texts"][k] for k in gen.TEXT_DIRTY_KINDS
                                                   if k.startswith("pii_"))
    assert any(re.fullmatch(r"1\d{10}", p) or re.fullmatch(r"1\d\d[- ]\d{4}[- ]\d{4}", p) or p.startswith("+86 ")
               for p in pii)
    assert any("@" in p for p in pii) and any("?" in p and p.startswith("http") for p in pii)
    assert any(re.match(r"\+(44|1|49|33) ", p) for p in pii)
    joined = "\n".join(text)
    assert all(p in joined for p in pii)


def test_text_content_is_clean_csv_and_topical(small):
    out, _, texts, _, labels = small
    assert not texts.text.str.contains("\n|\r|\"", regex=True).any()
    raw = (out / "texts.csv").read_text(encoding="utf-8")
    assert raw.count("\n") == len(texts) + 1  # one physical line per row
    ok_ts = _valid_ts(texts.ts)
    assert ok_ts.mean() > 0.95
    assert texts.ts[ok_ts].between("2025-06-01", "2026-04-01").all()
    ids = texts.item_id[texts.item_id != ""]
    assert ids.str.match(ITEM_ID).all() and (texts.item_id == "").any()  # posts have no item
    en = texts[(texts.lang == "en") & ~texts.text.str.contains(r"[<&@]|http|www\.|\+\d|\d{4}", regex=True)]
    words = en.text.str.split().str.len()
    assert words[words > 0].between(5, 45).all() and words.median() >= 15
    # each group's own topic words (its products / places to stay / trips) dominate its texts
    grp = labels.set_index("user_id").group
    en = en[en.user_id != ""].assign(group=lambda d: grp.loc[d.user_id].values)
    for group in gen.GROUPS:
        vocab = gen.EN[group]["vocab"]
        words = [w for slot in ("product", "stay", "trip", "place", "dish") for w in vocab.get(slot, [])]
        pattern = r"\b(?:%s)\b" % "|".join(re.escape(w) for w in words)
        own = en.text[en.group == group].str.contains(pattern, case=False, regex=True).mean()
        rest = en.text[en.group != group].str.contains(pattern, case=False, regex=True).mean()
        assert own > 0.6 and own > 10 * rest, (group, own, rest)
    # users are not clones
    per_user = en.groupby("user_id").text.apply(lambda s: " ".join(sorted(s)))
    assert per_user.nunique() == len(per_user)
    assert en.text.nunique() > 0.95 * len(en)


def test_template_banks_are_rich():
    for lang in gen.LANGS:
        for group in gen.GROUPS:
            assert gen.template_count(lang, group) >= 15, (lang, group)
            assert gen.vocabulary_size(lang, group) >= 40, (lang, group)
        assert gen.template_count(lang, gen.NOISE) >= 15
    assert unicodedata.normalize("NFKC", gen.to_fullwidth("ABC123")) == "ABC123"
    assert gen.to_fullwidth("ABC123") == "ＡＢＣ１２３"


def test_behaviour_differs_by_group(small):
    _, _, _, events, labels = small
    ev = events[(events.user_id != "") & events.event_type.isin(gen.EVENT_TYPES)]
    ev = ev.assign(group=labels.set_index("user_id").group.loc[ev.user_id].values)
    for group in gen.GROUPS:
        g = ev[ev.group == group]
        assert 0.55 <= (g.category == group).mean() <= 0.85, group
        assert g.item_id.str.match(ITEM_ID).all()
        assert (g.item_id.str.split("-").str[0] == g.category).all()
    share = lambda g, t: (ev.event_type[ev.group == g] == t).mean()  # noqa: E731
    assert share("electronics", "view") > share("food", "view")
    assert share("food", "purchase") > 3 * share("electronics", "purchase")
    assert share("film", "rating") > share("electronics", "rating")
    ratings = ev[ev.event_type == "rating"]
    ratings = ratings.assign(r=ratings.rating.astype(float)).groupby("group").r.mean()
    assert ratings["travel"] > ratings["electronics"] + 0.5
    noise = ev[ev.group == "noise"]
    assert (noise.category.value_counts(normalize=True) < 0.3).all()


def test_parquet_and_json_formats(tmp_path):
    import pyarrow.parquet as pq

    gen.generate(tmp_path / "pq", users=60, seed=1, fmt="parquet")
    t = pq.read_table(tmp_path / "pq" / "texts.parquet")
    e = pq.read_table(tmp_path / "pq" / "events.parquet")
    assert t.column_names == list(gen.TEXT_COLUMNS) and e.column_names == list(gen.EVENT_COLUMNS)
    assert str(e.schema.field("rating").type) == "int32"
    gen.generate(tmp_path / "js", users=60, seed=1, fmt="json", part_files=True, chunk_users=25)
    parts = sorted((tmp_path / "js" / "events.json").glob("part-*.json"))
    assert len(parts) == 3
    rows = [json.loads(line) for p in parts for line in p.read_text(encoding="utf-8").splitlines()]
    assert list(rows[0]) == list(gen.EVENT_COLUMNS)
    assert all(r["rating"] is None or isinstance(r["rating"], int) for r in rows)


def test_cli_rejects_bad_ranges():
    with pytest.raises(SystemExit):
        gen.build_parser().parse_args(["--texts-per-user", "30-5"])
    assert gen.build_parser().parse_args([]).users == 660


def test_committed_sample_matches_default_command(tmp_path):
    """data/sample == `python data/generate_sample.py --out data/sample --users 660 --seed 42`."""
    assert gen.DEFAULT_COMMAND == "python data/generate_sample.py --out data/sample --users 660 --seed 42"
    assert gen.main(["--out", str(tmp_path), "--users", "660", "--seed", "42", "--quiet"]) == 0
    expected, committed = _files(tmp_path), _files(SAMPLE)
    assert sorted(committed) == sorted(expected)
    _, mismatch, errors = filecmp.cmpfiles(SAMPLE, tmp_path, sorted(expected), shallow=False)
    assert not mismatch and not errors, (
        f"data/sample differs from the generator output in {mismatch or errors}; regenerate it with "
        f"`{gen.DEFAULT_COMMAND}`")
    stats = json.loads((SAMPLE / "stats.json").read_text(encoding="utf-8"))
    assert stats["users"] >= 600
    assert (SAMPLE / "texts.csv").stat().st_size < 2_000_000
    assert (SAMPLE / "events.csv").stat().st_size < 2_000_000
    readme = (SAMPLE / "README.md").read_text(encoding="utf-8")
    assert gen.DEFAULT_COMMAND in readme and str(stats["texts"]) in readme
