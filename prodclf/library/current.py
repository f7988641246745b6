"""``tags_current`` from a run's rows: pure ``DataFrame -> DataFrame`` merges.

``merge_current`` is what every run does: the previous current tags plus this run's
history rows give the next current tags. ``current_from_history`` rebuilds the same
table from history alone (``prodclf migrate``, and a consistency check in the tests).
The rules:

- an ``ok`` row replaces the product's tag and clears its error;
- an ``error`` row keeps the product's last good tag and sets the ``error_*`` columns
  (an error never erases a good tag);
- ``attempt_*`` and ``status`` always describe the latest attempt;
- products a run did not touch keep their row, except after a ``full`` run, which marks
  those it did not find in the base library ``active = false`` (never deletes them).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from prodclf.schemas import CURRENT_OK_COLUMNS, CURRENT_TAGS, STATUS_ERROR, STATUS_OK

_TYPES = {f.name: f.dataType for f in CURRENT_TAGS.fields}


def _shape(columns: dict[str, Column]) -> list[Column]:
    return [columns[f.name].cast(f.dataType).alias(f.name) for f in CURRENT_TAGS.fields]


def merge_current(
    previous: DataFrame,
    run_rows: DataFrame,
    *,
    run_id: str,
    run_date: date,
    full_run: bool,
) -> DataFrame:
    """The next ``tags_current``: ``previous`` (schema ``CURRENT_TAGS``) updated with one
    run's ``tags_history`` rows (schema ``COMMODITY_LIBRARY``)."""
    ok = F.col("status") == F.lit(STATUS_OK)
    upd = run_rows.select(
        "product_id",
        F.lit(True).alias("u_touched"),
        ok.alias("u_ok"),
        F.col("status").alias("u_status"),
        *[F.col(c).alias(f"u_{c}") for c in CURRENT_OK_COLUMNS],
        F.col("error_code").alias("u_error_code"),
        F.col("error_message").alias("u_error_message"),
        F.col("change_value").alias("u_change_value"),
    )
    prev = previous.select(
        "product_id", *[F.col(f.name).alias(f"p_{f.name}") for f in CURRENT_TAGS.fields[1:]]
    )
    joined = prev.join(upd, "product_id", "full")
    touched = F.col("u_touched").isNotNull()
    fresh_ok = touched & F.col("u_ok")
    fresh_error = touched & ~F.col("u_ok")
    gone = ~touched & F.lit(full_run)
    was_active = F.coalesce(F.col("p_active"), F.lit(True))

    def ok_col(name: str) -> Column:
        return F.when(fresh_ok, F.col(f"u_{name}")).otherwise(F.col(f"p_{name}"))

    def err_col(fresh: Column, name: str) -> Column:
        return F.when(fresh_ok, F.lit(None)).when(fresh_error, fresh).otherwise(F.col(f"p_{name}"))

    def attempt(fresh: Column, name: str) -> Column:
        return F.when(touched, fresh).otherwise(F.col(f"p_{name}"))

    columns: dict[str, Column] = {
        "product_id": F.col("product_id"),
        "active": F.when(touched, True).when(gone, False).otherwise(F.col("p_active")),
        "inactive_since": F.when(touched, F.lit(None))
        .when(gone, F.coalesce(F.col("p_inactive_since"), F.lit(run_date)))
        .otherwise(F.col("p_inactive_since")),
        "status": attempt(F.col("u_status"), "status"),
        **{c: ok_col(c) for c in CURRENT_OK_COLUMNS},
        "error_code": err_col(F.col("u_error_code"), "error_code"),
        "error_message": err_col(F.col("u_error_message"), "error_message"),
        "error_run_id": err_col(F.col("u_run_id"), "error_run_id"),
        "error_at": err_col(F.col("u_tagged_at"), "error_at"),
        "attempt_image_uri": attempt(F.col("u_image_uri"), "attempt_image_uri"),
        "attempt_change": attempt(F.col("u_change_value"), "attempt_change"),
        "attempt_model_version": attempt(F.col("u_model_version"), "attempt_model_version"),
        "updated_run_id": F.when(touched | (gone & was_active), F.lit(run_id)).otherwise(
            F.col("p_updated_run_id")
        ),
    }
    return joined.select(*_shape(columns))


def current_from_history(
    history: DataFrame,
    run_sequence: DataFrame,
    full_runs: Sequence[tuple[int, str, date]] = (),
) -> DataFrame:
    """``tags_current`` rebuilt from the rows of complete runs.

    ``run_sequence`` has ``run_id, seq``: the order the runs were committed in.
    ``full_runs`` are the full runs as ``(seq, run_id, run_date)``: a product whose latest
    attempt precedes a full run was not in that run's base library, so it is inactive
    since the first such run. Equal to what the runs' ``merge_current`` calls produced.
    """
    rows = history.join(F.broadcast(run_sequence), "run_id")
    latest = Window.partitionBy("product_id").orderBy(F.col("seq").desc())
    attempts = rows.withColumn("n", F.row_number().over(latest)).where(F.col("n") == 1).drop("n")
    oks = (
        rows.where(F.col("status") == F.lit(STATUS_OK))
        .withColumn("n", F.row_number().over(latest))
        .where(F.col("n") == 1)
        .select("product_id", *[F.col(c).alias(f"k_{c}") for c in CURRENT_OK_COLUMNS])
    )
    joined = attempts.join(oks, "product_id", "left")
    failed = F.col("status") == F.lit(STATUS_ERROR)
    gone_run: Column = F.lit(None).cast("string")
    gone_date: Column = F.lit(None).cast("date")
    for seq, run_id, day in sorted(full_runs, reverse=True):
        after = F.col("seq") < F.lit(seq)
        gone_run = F.when(after, F.lit(run_id)).otherwise(gone_run)
        gone_date = F.when(after, F.lit(day)).otherwise(gone_date)
    columns: dict[str, Column] = {
        "product_id": F.col("product_id"),
        "active": gone_run.isNull(),
        "inactive_since": gone_date,
        "status": F.col("status"),
        **{c: F.col(f"k_{c}") for c in CURRENT_OK_COLUMNS},
        "error_code": F.when(failed, F.col("error_code")),
        "error_message": F.when(failed, F.col("error_message")),
        "error_run_id": F.when(failed, F.col("run_id")),
        "error_at": F.when(failed, F.col("tagged_at")),
        "attempt_image_uri": F.col("image_uri"),
        "attempt_change": F.col("change_value"),
        "attempt_model_version": F.col("model_version"),
        "updated_run_id": F.coalesce(gone_run, F.col("run_id")),
    }
    return joined.select(*_shape(columns))
