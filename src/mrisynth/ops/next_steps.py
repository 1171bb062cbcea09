"""What to look at after `make run`: the verdict, the reports, the MLflow UI view, promote, serve.

`python -m mrisynth.ops.next_steps` (the Makefile's `run` target calls it after `dvc repro`) prints the
verdict's first lines from reports/table1.md and the commands to go on with, with this checkout's
experiment id in the UI link. Reads files and the tracking store only; writes nothing."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from mrisynth import paths


def verdict_lines(table: Path, limit: int = 6) -> list[str]:
    """The verdict sentences (`- **...`) of Table 1, at most `limit` ([] when there is no table)."""
    try:
        text = table.read_text()
    except OSError:
        return []
    section = text.split("## Verdict", 1)[1] if "## Verdict" in text else ""
    return [line.strip() for line in section.splitlines() if line.strip().startswith("- **")][:limit]


def experiment_id(name: str) -> str | None:
    """The id of experiment `name` in the tracking store (None when it or the store is missing)."""
    from mrisynth.io import tracking

    uri = os.environ.get("MLFLOW_TRACKING_URI", tracking.DEFAULT_URI)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return None  # no store yet: opening one would create an empty mlflow.db
    try:
        return tracking.experiment_id(name)
    except Exception:  # noqa: BLE001 - a hint printer never fails a finished run
        return None


def view_path(experiment_id_: str) -> str:
    """The UI route of the saved arms view in model-training mode (MLflow 3 opens in its GenAI mode unless
    the URL, or the user's last choice, says `workflowType=machine_learning`)."""
    from mrisynth.io.tracking import VIEW_KEY

    return f"#/experiments/{experiment_id_}/runs?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"


def message(experiment: str, experiment_id_: str | None, registry_name: str, port: int = 5000) -> str:
    """The next-steps text (pure: ids and names passed in)."""
    view = (f"http://127.0.0.1:{port}/{view_path(experiment_id_)}" if experiment_id_
            else f"http://127.0.0.1:{port} (experiment {experiment})")
    from mrisynth.core.urls import mask_url
    from mrisynth.io.tracking import DEFAULT_URI

    uri = mask_url(os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI))
    lines = [
        "Done. What to look at next:",
        f"  1. the verdict and every score:      {paths.TABLE1}  (how to read it: docs/verdict.md)",
        f"  2. figures:                          {paths.REALISM_PNG}, {paths.TEST_EXAMPLES}, {paths.TRAIN_GAN_CURVES}",
        f"  3. the runs in the MLflow UI:        .venv/bin/mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port {port}",
        f"     then open {view}",
        "     (the segmenter runs with test/validation Dice as columns, grouped by augmentation arm)",
        "  4. promote the new generator:        .venv/bin/mrisynth promote   (moves @champion only on a validation gain)",
        f"  5. serve or generate with it:        .venv/bin/mrisynth serve --model models:/{registry_name}@champion --port 5001",
        "     (@challenger while no version is promoted)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mrisynth.ops.next_steps", description=__doc__.split("\n")[0])
    parser.add_argument("--params", default="params.yaml", help="parameter file (default: %(default)s)")
    parser.add_argument("--port", type=int, default=5000, help="port of the MLflow UI in the printed commands (default: %(default)s)")
    args = parser.parse_args(argv)
    from mrisynth.config import load_params

    params = load_params(args.params)
    verdict = verdict_lines(paths.TABLE1)
    if verdict:
        print("Verdict (test split; reports/table1.md):\n" + "\n".join(f"  {line}" for line in verdict) + "\n")
    experiment = params.train_segmenter.experiment
    print(message(experiment, experiment_id(experiment), params.train_gan.registry_name, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
