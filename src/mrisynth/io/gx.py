"""Great Expectations checks over a per-image metadata table, with HTML Data Docs.

The suite lives as JSON in `expectations/`; values that depend on the configuration (size,
channels, counts) are GX suite parameters (`{"$PARAMETER": "size"}`) filled in at run time.
Every expectation's result is also kept as plain records (`ValidationReport.suites`), which
`write_static_docs` renders as a self-contained page (mrisynth.core.datadocs) that works offline."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mrisynth import BRATS_LABELS
from mrisynth.errors import DataError
from mrisynth.io import tiff
from mrisynth.io.manifest import SPLITS, is_inside, is_plain_name, read_manifest

SUITE_DIR = Path(__file__).resolve().parents[3] / "expectations"


def _metadata_row(directory: Path, row: pd.Series) -> dict:
    meta = {"case_id": str(row["case_id"]), "split": str(row["split"]), "image": row["image"], "mask": row["mask"]}
    meta["paths_inside"] = (is_plain_name(meta["case_id"]) and all(is_inside(directory, row[c]) for c in ("image", "mask"))
                            and meta["split"] in SPLITS)
    if not meta["paths_inside"]:  # never open a file outside the dataset folder
        return meta | {"has_mask": False, "readable": False}
    image_path, mask_path = directory / str(row["image"]), directory / str(row["mask"])
    meta["has_mask"] = bool(mask_path.is_file())
    try:
        image = tiff.read_image(image_path)
        mask = tiff.read_mask(mask_path) if meta["has_mask"] else None
        meta["readable"] = True
    except DataError:
        image, mask, meta["readable"] = None, None, False
    if image is not None:
        finite = np.isfinite(image)
        values = image[finite]
        meta.update(
            height=image.shape[0], width=image.shape[1], channels=image.shape[2] if image.ndim == 3 else 1,
            dtype=str(image.dtype), nan_count=int(finite.size - finite.sum()),
            min=float(values.min()) if values.size else np.nan, max=float(values.max()) if values.size else np.nan,
            brain_fraction=float(np.mean(image.any(axis=-1))),
        )
    if mask is not None:
        labels = sorted(int(v) for v in np.unique(mask))
        meta.update(
            mask_height=mask.shape[0], mask_width=mask.shape[1] if mask.ndim > 1 else 0, mask_dtype=str(mask.dtype),
            mask_labels=",".join(map(str, labels)), labels_ok=set(labels) <= set(BRATS_LABELS),
            tumor_fraction=float(np.mean(mask > 0)),
        )
    return meta


def image_metadata(directory: Path, manifest: pd.DataFrame, expected_counts: dict[str, int]) -> pd.DataFrame:
    """One row per manifest entry: shape, dtype, range, NaN count, mask labels, fractions, split bookkeeping."""
    directory = Path(directory)
    table = pd.DataFrame([_metadata_row(directory, row) for _, row in manifest.iterrows()])
    columns = ["height", "width", "channels", "dtype", "nan_count", "min", "max", "brain_fraction",
               "mask_height", "mask_width", "mask_dtype", "mask_labels", "labels_ok", "tumor_fraction"]
    for column in columns:
        if column not in table:
            table[column] = np.nan
    # a mask that could not be read is reported by `readable`, not as a label error; a missing one by `has_mask`
    table["labels_ok"] = table["labels_ok"].fillna(True).astype(bool)
    table["splits_of_case"] = table.groupby("case_id")["split"].transform("nunique")
    table["split_count"] = table.groupby("split")["split"].transform("size")
    table["split_expected"] = table["split"].map(lambda s: expected_counts.get(s, 0))
    return table


@dataclass
class ValidationReport:
    success: bool
    failures: list[str] = field(default_factory=list)
    docs: str | None = None
    statistics: dict = field(default_factory=dict)
    suites: list[dict] = field(default_factory=list)  # per suite: name, success, statistics, one record per expectation

    def summary(self) -> str:
        head = "PASSED" if self.success else f"FAILED ({len(self.failures)} expectation(s))"
        lines = [f"Great Expectations: {head} [{self.statistics.get('successful_expectations', '?')}/{self.statistics.get('evaluated_expectations', '?')} passed]"]
        lines += [f"  - {f}" for f in self.failures]
        if self.docs:
            lines.append(f"Data Docs: {self.docs}")
        return "\n".join(lines)


def load_suite(*names: str, suite_dir: Path = SUITE_DIR) -> dict:
    """One suite from the JSON files `expectations/<name>.json` (several names are concatenated)."""
    names = names or ("brats_slices",)
    suites = []
    for name in names:
        path = Path(suite_dir) / f"{name}.json"
        if not path.is_file():
            raise DataError(f"{path}: expected a Great Expectations suite (JSON), found no file")
        suites.append(json.loads(path.read_text()))
    return {"name": "_and_".join(names), "meta": suites[0].get("meta", {}), "expectations": [e for s in suites for e in s["expectations"]]}


MAX_NAMED = 5  # offending rows named per failed expectation


def _offenders(result, table: pd.DataFrame | None, column: str | None) -> str:
    """'case file: value' for the rows an expectation flagged (GX's unexpected index list)."""
    info = result.result or {}
    index = info.get("partial_unexpected_index_list") or info.get("unexpected_index_list") or []
    if table is None or not index:
        return ""
    names = []
    for i in index[:MAX_NAMED]:
        i = i.get("index", i) if isinstance(i, dict) else i
        if i not in table.index:
            continue
        row = table.loc[i]
        case = row.get("case_id", f"row {i}")
        if column == "labels_ok":
            bad = [v for v in str(row.get("mask_labels", "")).split(",") if v and int(float(v)) not in BRATS_LABELS]
            names.append(f"{case} mask {row.get('mask')}: label {', '.join(bad) or '?'} not in {{{', '.join(map(str, BRATS_LABELS))}}}")
        elif column in ("readable",):
            names.append(f"{case}: {row.get('image')} or {row.get('mask')} is unreadable (truncated or not a TIFF)")
        elif column == "has_mask":
            names.append(f"{case}: mask {row.get('mask')} is missing")
        elif column is not None and column.startswith("mask"):
            names.append(f"{case} mask {row.get('mask')}: {column}={row.get(column)}")
        elif column is not None and column in table:
            names.append(f"{case} image {row.get('image')}: {column}={row.get(column)}")
        else:
            names.append(f"{case} ({row.get('split')})")
    more = len(index) - len(names)
    return "; ".join(names) + (f"; and {more} more" if more > 0 else "")


def _target(kwargs: dict) -> str:
    return kwargs.get("column") or (f"{kwargs.get('column_A')} == {kwargs.get('column_B')}" if "column_A" in kwargs else "table")


def _bounds(kwargs: dict) -> dict:
    return {k: kwargs[k] for k in ("value_set", "min_value", "max_value", "value") if k in kwargs}


def _observed(info: dict) -> str:
    """What GX measured: the observed value, or how many rows were unexpected (with examples)."""
    if info.get("observed_value") is not None:
        return str(info["observed_value"])
    if info.get("element_count") is not None:
        bad = info.get("unexpected_count") or 0
        text = f"{bad} of {info['element_count']} rows unexpected"
        examples = [v.item() if hasattr(v, "item") else v for v in (info.get("partial_unexpected_list") or [])[:MAX_NAMED]]
        return text + (f", e.g. {examples}" if bad and examples else "")
    return ""


def _column_values(table: pd.DataFrame | None, column: str | None) -> str:
    """The values a column holds: its range when numeric, else its distinct values (a few)."""
    if table is None or not column or column not in table:
        return ""
    values = table[column].dropna()
    if values.empty:
        return "no values"
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        low, high = values.min(), values.max()
        return f"{low:.4g}" if low == high else f"{low:.4g} … {high:.4g}"
    distinct = sorted({str(v) for v in values})
    return "{" + ", ".join(distinct[:MAX_NAMED]) + (", …" if len(distinct) > MAX_NAMED else "") + "}"


def expectation_record(result, table: pd.DataFrame | None = None) -> dict:
    """One expectation's result as plain values (mrisynth.core.datadocs renders them)."""
    config = result.expectation_config
    kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id",)}
    info = result.result or {}
    error = getattr(result, "exception_info", None) or {}
    observed = _observed(info)
    held = _column_values(table, kwargs.get("column"))
    if held and info.get("observed_value") is None:
        observed = f"{held} ({observed})" if observed else held
    if isinstance(error, dict) and error.get("raised_exception"):
        observed = f"error: {error.get('exception_message')}"
    bounds = _bounds(kwargs)
    return {"type": config.type, "target": _target(kwargs), "notes": (config.meta or {}).get("notes", ""),
            "expected": ", ".join(f"{k} {v}" for k, v in bounds.items()) if bounds else ("pairs equal" if "column_A" in kwargs else ""),
            "success": bool(result.success), "observed": observed,
            "details": "" if result.success else _offenders(result, table, kwargs.get("column") or kwargs.get("column_A"))}


def write_static_docs(report: ValidationReport, html_path: Path, markdown_path: Path | None = None,
                      title: str = "Data validation", source: str | None = None) -> None:
    """The report's expectations as a self-contained HTML page (and Markdown), readable offline."""
    from mrisynth.core import datadocs

    for path, text in ((html_path, datadocs.html(report.suites, title, source)),
                       (markdown_path, datadocs.markdown(report.suites, title, source))):
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text, encoding="utf-8")


def _describe_failure(result, table: pd.DataFrame | None = None) -> str:
    config = result.expectation_config
    kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id",)}
    target = _target(kwargs)
    notes = (config.meta or {}).get("notes", "")
    info = result.result or {}
    found = []
    if "observed_value" in info:
        found.append(f"observed {info['observed_value']}")
    named = _offenders(result, table, kwargs.get("column") or kwargs.get("column_A"))
    if info.get("unexpected_count"):
        found.append(f"{info['unexpected_count']} unexpected: {named}" if named else
                     f"{info['unexpected_count']} unexpected, e.g. {info.get('partial_unexpected_list', [])[:MAX_NAMED]}")
    bounds = _bounds(kwargs)
    return f"{config.type} on {target} ({notes}): expected {bounds or 'pairs equal'}, found {'; '.join(found) or 'failure'}"


def validate_table(
    table: pd.DataFrame,
    parameters: dict,
    suite: dict | None = None,
    docs_root: Path | None = None,
) -> ValidationReport:
    """Run the suite over `table`. With docs_root, a file-backed GX project there builds Data Docs."""
    import great_expectations as gx
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    suite = suite or load_suite()
    if docs_root is not None:
        Path(docs_root).mkdir(parents=True, exist_ok=True)
        context = gx.get_context(mode="file", project_root_dir=str(docs_root))
    else:
        context = gx.get_context(mode="ephemeral")
    try:
        context.variables.progress_bars = {"globally": False, "metric_calculations": False}
    except Exception:  # older configs: progress bars are cosmetic only
        pass
    source = context.data_sources.add_or_update_pandas("mrisynth")
    try:
        asset = source.get_asset("images")
    except LookupError:
        asset = source.add_dataframe_asset(name="images")
    try:
        batch = asset.get_batch_definition("all")
    except (LookupError, KeyError):
        batch = asset.add_batch_definition_whole_dataframe("all")
    gx_suite = gx.ExpectationSuite(name=suite["name"], meta=suite.get("meta", {}))
    for entry in suite["expectations"]:
        gx_suite.add_expectation_configuration(
            ExpectationConfiguration(type=entry["type"], kwargs=entry["kwargs"], meta=entry.get("meta", {}))
        )
    gx_suite = context.suites.add_or_update(gx_suite)
    definition = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=f"{suite['name']}_images", data=batch, suite=gx_suite)
    )
    actions = [gx.checkpoint.UpdateDataDocsAction(name="data_docs")] if docs_root is not None else []
    checkpoint = context.checkpoints.add_or_update(
        gx.Checkpoint(name=f"{suite['name']}_checkpoint", validation_definitions=[definition], actions=actions)
    )
    run = checkpoint.run(batch_parameters={"dataframe": table}, expectation_parameters=parameters)
    failures, stats, suites = [], {}, []
    for validation in run.run_results.values():
        stats = dict(validation.statistics)
        failures += [_describe_failure(r, table) for r in validation.results if not r.success]
        suites.append({"name": getattr(validation, "suite_name", None) or suite["name"], "success": bool(validation.success),
                       "statistics": stats, "expectations": [expectation_record(r, table) for r in validation.results]})
    docs = None
    if docs_root is not None:
        sites = context.get_docs_sites_urls()
        docs = sites[0]["site_url"].removeprefix("file://") if sites else None
    return ValidationReport(success=bool(run.success), failures=failures, docs=docs, statistics=stats, suites=suites)


def dataset_info(directory: Path) -> dict:
    """DIR/dataset.json written by the importer (requested counts, size, modalities), or {}."""
    path = Path(directory) / "dataset.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def validate_dataset(
    directory: Path,
    counts: dict[str, int] | None = None,
    size: int | None = None,
    channels: int | None = None,
    docs_root: Path | None = None,
) -> ValidationReport:
    """Validate an imported dataset folder; expected values default to what DIR/dataset.json recorded."""
    manifest = read_manifest(directory, check_paths=False)  # unsafe paths are reported by the suite (paths_inside)
    info = dataset_info(directory)
    counts = counts or info.get("counts") or manifest["split"].value_counts().to_dict()
    size = size or info.get("size") or int(manifest["height"].iloc[0])
    channels = channels or len(info.get("modalities", [])) or int(manifest["channels"].iloc[0])
    table = image_metadata(directory, manifest, counts)
    parameters = {"size": int(size), "channels": int(channels), "rows": int(sum(counts.values()))}
    return validate_table(table, parameters, docs_root=docs_root)
