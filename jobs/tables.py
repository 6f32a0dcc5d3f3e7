"""Every table SegLake writes, in one place: its name, schema, partitioning, keys and writers.

Jobs reach their tables through a `Lake` (an output root and a Delta engine): each write is
checked against the table's registered schema and cast to it, so a table has one schema
whatever the run (with or without events, either engine), and each read goes through the
same Delta engine (jobs/delta_io.py). `seglake-explain` reads through `Lake.arrow`, without
Spark.
"""
from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (ArrayType, BooleanType, DataType, DoubleType, FloatType, IntegerType, LongType,
                               MapType, StringType, StructField, StructType, TimestampType)

from jobs import delta_io

STRING, INT, LONG, DOUBLE, FLOAT = StringType(), IntegerType(), LongType(), DoubleType(), FloatType()
BOOL, TIMESTAMP = BooleanType(), TimestampType()


def array(t: DataType) -> ArrayType:
    return ArrayType(t, True)


def mapping(k: DataType, v: DataType) -> MapType:
    return MapType(k, v, True)


def struct(**columns: DataType) -> StructType:
    """A schema from name=type, in order (every column nullable, as Delta reads them back)."""
    return StructType([StructField(n, t, True) for n, t in columns.items()])


SEGMENT, ASSIGN = "seglake-segment", "seglake-assign"


@dataclass(frozen=True)
class Table:
    name: str
    schema: StructType
    partition_by: str | None  # run_id: each run replaces only its own partition
    written_by: tuple[str, ...]
    doc: str
    keys: tuple[str, ...] = ()  # MERGE keys (the assign job's upserts)

    @property
    def columns(self) -> list[str]:
        return [f.name for f in self.schema]


K_SELECTION_ROW = struct(k=INT, silhouette=DOUBLE, cost=DOUBLE, wssse=DOUBLE, davies_bouldin=DOUBLE,
                         calinski_harabasz=DOUBLE, min_share=DOUBLE, max_share=DOUBLE, size_entropy=DOUBLE,
                         sample_size=LONG, chosen=BOOL)

_TABLES = (
    Table("user_segments", struct(
        run_id=STRING, user_id=STRING, segment_id=INT, distance=DOUBLE, second_segment_id=INT,
        second_distance=DOUBLE, margin=DOUBLE, matched_terms=array(STRING), n_texts=LONG, n_events=LONG,
        lang=STRING, assigned_at=TIMESTAMP, assigned_by=STRING, top_segment_ids=array(INT), memberships=array(DOUBLE),
        outlier=BOOL),
        "run_id", (SEGMENT, ASSIGN), "each user's segment under a model run (assign MERGEs into it)",
        keys=("run_id", "user_id")),
    Table("segments", struct(
        run_id=STRING, segment_id=INT, name=STRING, parent_id=INT, lineage=array(INT), size=LONG, share=DOUBLE,
        mean_distance=DOUBLE, texts_per_user=DOUBLE, typical_users=array(STRING), top_terms=array(STRING),
        term_scores=array(DOUBLE), representative_texts=array(STRING), n_events=LONG, n_ratings=LONG,
        events_per_user=DOUBLE, purchase_share=DOUBLE, mean_rating=DOUBLE, top_categories=array(STRING),
        top_category_shares=array(DOUBLE), top_category_lifts=array(DOUBLE), centroid=array(DOUBLE),
        suppressed=BOOL, lexical_terms=array(STRING)),
        "run_id", (SEGMENT,), "one profile per segment: name, size, terms, texts, behaviour, centroid"),
    Table("segment_lineage", struct(
        run_id=STRING, segment_id=INT, relation=STRING, previous_run_id=STRING, previous_ids=array(INT),
        overlap_shares=array(DOUBLE), previous_shares=array(DOUBLE), successor_ids=array(INT),
        successor_shares=array(DOUBLE), size=LONG, common_users=LONG, centroid_similarity=DOUBLE),
        "run_id", (SEGMENT,), "each run's segments against the previous run's: same, split, merged, new, "
        "retired, with the member overlaps (jobs/segment_ids.py)"),
    Table("k_selection", struct(
        run_id=STRING, k=INT, silhouette=DOUBLE, cost=DOUBLE, wssse=DOUBLE, davies_bouldin=DOUBLE,
        calinski_harabasz=DOUBLE, min_share=DOUBLE, max_share=DOUBLE, size_entropy=DOUBLE, sample_size=LONG,
        chosen=BOOL, lang=STRING),
        "run_id", (SEGMENT,), "the k sweep's scores (k auto; per language group with cluster.per_language)"),
    Table("quarantine", struct(
        run_id=STRING, input=STRING, source=STRING, reason=STRING, record=STRING, quarantined_at=TIMESTAMP),
        "run_id", (SEGMENT, ASSIGN), "rejected input rows, each with its reason (PII masked)"),
    Table("text_embeddings", struct(
        run_id=STRING, model_id=STRING, text_hash=STRING, embedding=array(FLOAT), created_at=TIMESTAMP),
        "run_id", (SEGMENT, ASSIGN), "the embedding cache: vectors by model id and SHA-256 of the cleaned text"),
    Table("user_vectors", struct(
        user_id=STRING, text_mean=array(DOUBLE), text_weight=DOUBLE, n_texts=LONG, last_text_ts=TIMESTAMP,
        lang_counts=mapping(STRING, LONG), n_events=LONG, event_counts=mapping(STRING, LONG),
        category_counts=mapping(STRING, LONG), rating_sum=DOUBLE, rating_count=LONG, last_event_ts=TIMESTAMP,
        model_id=STRING, updated_by=STRING, updated_at=TIMESTAMP, term_counts=mapping(STRING, LONG)),
        None, (SEGMENT, ASSIGN), "each user's running state (replaced by a full run, MERGEd by assign)",
        keys=("user_id",)),
    Table("lexical_terms", struct(
        run_id=STRING, term=STRING, term_index=INT, df=LONG, idf=DOUBLE, component=array(DOUBLE)),
        "run_id", (SEGMENT,), "the lexical channel of a model run: vocabulary, document frequency, IDF, "
        "the term's SVD loadings"),
    Table("segment_history", struct(
        run_id=STRING, model_run_id=STRING, user_id=STRING, old_segment_id=INT, new_segment_id=INT,
        changed_at=TIMESTAMP),
        "run_id", (SEGMENT, ASSIGN), "one row per user whose segment a run set or changed"),
    Table("segment_recommendations", struct(
        run_id=STRING, segment_id=INT, rank=INT, item_id=STRING, score=DOUBLE, n_users=LONG,
        segment_share=DOUBLE, lift=DOUBLE, reason_terms=array(STRING)),
        "run_id", (SEGMENT,), "ranked items per segment (needs events)"),
    Table("user_recommendations", struct(
        run_id=STRING, user_id=STRING, segment_id=INT, rank=INT, item_id=STRING, score=DOUBLE),
        "run_id", (SEGMENT,), "each user's segment list minus what they consumed (recommend.user_table)"),
    Table("runs", struct(
        run_id=STRING, status=STRING, error=STRING, started_at=TIMESTAMP, finished_at=TIMESTAMP, conf=STRING,
        texts_read=LONG, texts_kept=LONG, events_read=LONG, events_kept=LONG, quarantined=LONG,
        quarantine_reasons=mapping(STRING, LONG), texts_embedded_distinct=LONG, texts_embedded_new=LONG,
        users=LONG, users_text_only=LONG, users_events_only=LONG, algorithm=STRING, distance=STRING, k=INT,
        silhouette=DOUBLE, cost=DOUBLE, wssse=DOUBLE, davies_bouldin=DOUBLE, calinski_harabasz=DOUBLE,
        min_share=DOUBLE, max_share=DOUBLE, size_entropy=DOUBLE, stability_ari=DOUBLE, stable=BOOL,
        k_selection=array(K_SELECTION_ROW), stage_seconds=mapping(STRING, DOUBLE), embed_texts_per_s=DOUBLE,
        embedding_model=STRING, model_path=STRING, report_path=STRING, feature_params=STRING,
        embed_model_id=STRING, texts_watermark=TIMESTAMP, events_watermark=TIMESTAMP),
        "run_id", (SEGMENT,), "one row per full run: status (readers take succeeded only), counts, quality"),
    Table("drift", struct(
        run_id=STRING, model_run_id=STRING, measured_at=TIMESTAMP, users=LONG, far_share=DOUBLE,
        distance_p95_train=DOUBLE, psi=DOUBLE, mean_shift=DOUBLE, refit_recommended=BOOL, reasons=array(STRING)),
        "run_id", (ASSIGN,), "drift of each assign run against its model run"),
    Table("assign_runs", struct(
        run_id=STRING, model_run_id=STRING, mode=STRING, status=STRING, error=STRING, started_at=TIMESTAMP,
        finished_at=TIMESTAMP, texts_read=LONG, texts_kept=LONG, events_read=LONG, events_kept=LONG,
        quarantined=LONG, quarantine_reasons=mapping(STRING, LONG), texts_embedded_new=LONG, users_touched=LONG,
        users_new=LONG, users_changed=LONG, texts_watermark=TIMESTAMP, events_watermark=TIMESTAMP,
        far_share=DOUBLE, psi=DOUBLE, mean_shift=DOUBLE, refit_recommended=BOOL,
        stage_seconds=mapping(STRING, DOUBLE)),
        "run_id", (ASSIGN,), "one row per assign run (batch, reassign or micro-batch)"),
)
TABLES: dict[str, Table] = {t.name: t for t in _TABLES}


def conform(df: DataFrame, table: Table) -> DataFrame:
    """`df` as the table's registered columns, in order and cast to their types; a missing or
    unexpected column is a bug in the writer, named here rather than found by a reader."""
    missing = [c for c in table.columns if c not in df.columns]
    extra = [c for c in df.columns if c not in table.columns]
    if missing or extra:
        raise ValueError(f"rows for table {table.name} do not match its schema in jobs/tables.py: "
                         f"missing {missing}, unexpected {extra}")
    return df.select(*[F.col(f.name).cast(f.dataType).alias(f.name) for f in table.schema])


class Lake:
    """One output root's tables, read and written with one Delta engine."""

    def __init__(self, spark: SparkSession | None, root: str, engine: str = "auto"):
        self.spark, self.root = spark, root.rstrip("/")
        self.engine = delta_io.resolve_engine(spark, engine)

    def path(self, name: str) -> str:
        return f"{self.root}/{TABLES[name].name}"

    def paths(self, names: list[str] | tuple[str, ...] | None = None) -> dict[str, str]:
        return {n: self.path(n) for n in (names or TABLES)}

    def exists(self, name: str) -> bool:
        return delta_io.table_exists(self.path(name))

    def read(self, name: str, **kw) -> DataFrame:
        return delta_io.read_table(self.spark, self.path(name), engine=self.engine, **kw)

    def read_if_exists(self, name: str) -> DataFrame | None:
        return delta_io.read_table_if_exists(self.spark, self.path(name), engine=self.engine)

    def rows(self, name: str, rows: list[dict]) -> DataFrame:
        """A DataFrame of plain rows in the table's schema (run rows, k_selection, drift)."""
        return self.spark.createDataFrame(rows, TABLES[name].schema)

    def write_run(self, name: str, df: DataFrame, run_id: str, properties: dict[str, str] | None = None) -> int:
        """Replace run `run_id`'s partition of the table with `df`; the rows written."""
        t = TABLES[name]
        return delta_io.write_run(conform(df, t), self.path(name), run_id, engine=self.engine,
                                  partition_by=t.partition_by, properties=properties)

    def replace(self, name: str, df: DataFrame) -> int:
        """Replace the whole table (older versions stay readable by time travel)."""
        t = TABLES[name]
        return delta_io.overwrite_table(conform(df, t), self.path(name), engine=self.engine,
                                        partition_by=t.partition_by)

    def merge(self, name: str, df: DataFrame, **kw) -> dict[str, int | None]:
        """Upsert `df` into the table by its keys (see delta_io.merge for the options)."""
        t = TABLES[name]
        return delta_io.merge(conform(df, t), self.path(name), list(t.keys), engine=self.engine,
                              partition_by=t.partition_by, **kw)

    def register(self, schema: str, names: list[str] | tuple[str, ...] | None = None) -> dict[str, str]:
        """Name the tables in a catalog schema (output.catalog_schema); returns name -> full name."""
        return delta_io.register_tables(self.spark, self.paths(names), schema)

    def arrow(self, name: str, run_id: str | None = None, columns: list[str] | None = None):
        """The table (one run's partition when `run_id`) as an Arrow table, through the Delta log
        (deltalake): for readers without Spark."""
        from deltalake import DeltaTable

        filters = [("run_id", "=", run_id)] if run_id is not None else None
        return DeltaTable(delta_io.table_uri(self.path(name))).to_pyarrow_table(filters=filters, columns=columns)


def latest_succeeded_run(output: str) -> str:
    """The newest run under `output` whose status is succeeded (readers must ignore the
    others), read without Spark."""
    import pyarrow.compute as pc

    runs = Lake(None, output, "delta-rs").arrow("runs", columns=["run_id", "status", "finished_at"])
    ok = runs.filter(pc.equal(runs["status"], "succeeded"))
    if ok.num_rows == 0:
        raise LookupError(f"no succeeded run under {output}")
    return ok.sort_by([("finished_at", "descending")])["run_id"][0].as_py()
