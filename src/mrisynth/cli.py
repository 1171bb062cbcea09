"""`mrisynth` command line. Errors meant for users print one readable block and exit non-zero."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from mrisynth import MODALITIES
from mrisynth.core.arms import ARMS
from mrisynth.errors import MrisynthError


def _cmd_phantom(args: argparse.Namespace) -> int:
    from mrisynth.data.ingest import make_phantom

    ids = make_phantom(Path(args.out), args.cases, args.seed, workers=args.workers, version=args.version)
    print(f"wrote {len(ids)} phantom cases ({ids[0]} .. {ids[-1]}) to {args.out}")
    return 0


def _cmd_card(args: argparse.Namespace) -> int:
    from mrisynth.core import datacard
    from mrisynth.io import card

    built = card.build(Path(args.dir))
    if args.write:
        card.write(Path(args.dir), built)
    print(json.dumps(built, indent=2) if args.json else datacard.markdown(built), end="" if not args.json else "\n")
    return 0


def _import_options(args: argparse.Namespace):
    from mrisynth.data.ingest import ImportOptions

    modalities = tuple(m.strip() for m in args.modalities.split(",") if m.strip())
    return ImportOptions(size=args.size, modalities=modalities, slice_rule=args.slice, fit=args.fit, layout=args.layout)


def _cmd_import(args: argparse.Namespace) -> int:
    from mrisynth.data.ingest import import_brats

    counts = {"train": args.train, "val": args.val, "test": args.test}
    manifest = import_brats(
        Path(args.src), Path(args.out), counts, args.seed, _import_options(args),
        skip_invalid=args.skip_invalid, force=args.force, workers=args.workers,
    )
    summary = ", ".join(f"{s} {n}" for s, n in manifest["split"].value_counts().reindex(list(counts)).fillna(0).astype(int).items())
    print(f"imported {len(manifest)} slices ({summary}) into {args.out}")
    rejected = Path(args.out) / "rejected.csv"
    if rejected.exists():
        print(f"skipped invalid cases, listed in {rejected}")
    return 0


def _cmd_default(args: argparse.Namespace) -> int:
    """Recreate the shipped default dataset from params.yaml's `data` section (phantom, then import)."""
    from mrisynth.config import load_params
    from mrisynth.data.ingest import ImportOptions, import_brats, make_phantom

    data = load_params(args.params).data
    out = Path(args.out or data.out)
    with tempfile.TemporaryDirectory(prefix="mrisynth-phantom-") as raw:
        make_phantom(Path(raw), data.phantom_cases, data.seed, workers=args.workers, version=data.phantom_version)
        options = ImportOptions(size=data.image_size, modalities=data.modalities, slice_rule=data.slice, fit=data.fit)
        counts = {"train": data.train, "val": data.val, "test": data.test}
        manifest = import_brats(Path(raw), out, counts, data.seed, options, force=args.force, workers=args.workers,
                                source_label=f"phantom(version={data.phantom_version}, cases={data.phantom_cases}, seed={data.seed})")
    print(f"default dataset: {len(manifest)} slices from {data.phantom_cases} phantom cases (seed {data.seed}) in {out}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from mrisynth.io.gx import dataset_info, validate_dataset

    counts = None
    if any(v is not None for v in (args.train, args.val, args.test)):
        # a count not given keeps the value recorded at import (DIR/dataset.json), not 0
        recorded = dataset_info(Path(args.dir)).get("counts") or {}
        counts = {s: getattr(args, s) if getattr(args, s) is not None else int(recorded.get(s, 0)) for s in ("train", "val", "test")}
    from mrisynth import paths

    docs_root = Path(args.docs) if args.docs else Path(args.dir).resolve().parent / paths.GX_DOCS
    print(f"validate: Data Docs go to {docs_root} (--docs to choose)")
    report = validate_dataset(Path(args.dir), counts=counts, size=args.size, channels=args.channels, docs_root=docs_root)
    print(report.summary())
    return 0 if report.success else 1


def _cmd_promote(args: argparse.Namespace) -> int:
    from mrisynth.config import load_params
    from mrisynth.io import tracking
    from mrisynth.inference.promote import promote

    params = load_params(args.params)
    tracking.configure(params.train_gan.experiment)
    name = args.name or params.train_gan.registry_name
    decision = promote(name, args.version, params.promote.metric, params.promote.higher_is_better, force=args.force,
                       margin=params.promote.margin)
    verdict = "PROMOTED to @champion" if decision.promoted else "NOT promoted"
    print(f"{name} v{decision.candidate}: {verdict} ({decision.reason}); "
          f"{params.promote.metric}: candidate {decision.candidate_value:.5f}, champion "
          + ("none" if decision.champion_value is None else f"{decision.champion_value:.5f}"))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from mrisynth.data.export import export

    target = export(Path(args.dir), Path(args.out), args.format, args.arm, Path(args.augmented) if args.augmented else None,
                    args.dataset_id, args.name, args.force)
    print(f"exported {args.dir} ({args.format}, arm {args.arm}) to {target}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from mrisynth.inference.server import serve

    if args.max_batch < 1:
        raise MrisynthError(f"--max-batch {args.max_batch}: expected at least 1")
    if not 0 < args.body_timeout < float("inf"):  # also refuses nan
        raise MrisynthError(f"--body-timeout {args.body_timeout}: expected a finite number of seconds > 0")
    if not 0 <= args.batch_wait_ms < 1000:
        raise MrisynthError(f"--batch-wait-ms {args.batch_wait_ms}: expected 0 <= ms < 1000")
    serve(args.model, args.host, args.port, args.max_batch, args.max_bytes, args.body_timeout, args.batch_wait_ms)
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from mrisynth.inference.generate import generate
    from mrisynth.io import tracking

    tracking.configure_uri()
    written = generate(args.model, Path(args.masks), Path(args.out), Path(args.brain) if args.brain else None)
    print(f"wrote {len(written)} images (TIFF + NIfTI) to {args.out}")
    return 0


def _cmd_team(args: argparse.Namespace) -> int:
    from mrisynth.ops import team

    return team.main(args.action, args.repo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mrisynth", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _data_commands(sub.add_parser("data", help="make or import BraTS-format data").add_subparsers(dest="data_command", required=True))
    _dataset_commands(sub)
    _model_commands(sub)
    te = sub.add_parser("team", help="a local team stack on 127.0.0.1: PostgreSQL, S3 (SeaweedFS), MLflow server (state in .team/)")
    te.add_argument("action", choices=["up", "down", "status"],
                    help="up: start the stack (unless running), write TEAM_DIR/env.sh, set the DVC remote 'team'; down: stop all; status: URIs, up/down")
    te.add_argument("--repo", default=None, help="DVC repository whose .dvc/config.local gets the remote 'team' (default: the current folder)")
    te.set_defaults(func=_cmd_team)
    return parser


def _data_commands(data) -> None:
    """`mrisynth data phantom | card | import | default`."""
    from mrisynth.config import DataParams

    d = DataParams()  # CLI defaults come from the one typed config
    ph = data.add_parser("phantom", help="write realistic phantom cases in the BraTS 2020 layout")
    ph.add_argument("out", help="output folder (acts as MICCAI_BraTS2020_TrainingData)")
    ph.add_argument("--cases", type=int, default=d.phantom_cases, help=f"number of cases (default {d.phantom_cases})")
    ph.add_argument("--seed", type=int, default=d.seed, help=f"random seed; same seed, same bytes (default {d.seed})")
    ph.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    ph.add_argument("--version", type=int, default=d.phantom_version, choices=[1, 2],
                    help=f"2: realistic variety (core/phantom_v2.py), 1: the original easy phantom (default {d.phantom_version})")
    ph.set_defaults(func=_cmd_phantom)

    ca = data.add_parser("card", help="the dataset card of an imported folder: grades, sub-regions, areas, contrasts, threshold baseline")
    ca.add_argument("dir", help="imported dataset folder (with manifest.csv)")
    ca.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    ca.add_argument("--write", action="store_true", help="(re)write DIR/card.json and DIR/card.md")
    ca.set_defaults(func=_cmd_card)

    im = data.add_parser("import", help="sample, slice and normalise a BraTS 2020/2021/2023 folder into TIFF splits")
    im.add_argument("src", help="BraTS 2020 training folder (or its parent), or a phantom folder")
    im.add_argument("--out", required=True, help="output folder (must be empty unless --force)")
    im.add_argument("--train", type=int, default=d.train, help=f"training cases (default {d.train})")
    im.add_argument("--val", type=int, default=d.val, help=f"validation cases (default {d.val})")
    im.add_argument("--test", type=int, default=d.test, help=f"test cases (default {d.test})")
    im.add_argument("--seed", type=int, default=d.seed, help=f"split seed (default {d.seed})")
    im.add_argument("--size", type=int, default=d.image_size, help=f"output side in pixels (default {d.image_size})")
    im.add_argument("--modalities", default=",".join(d.modalities), help=f"comma-separated, from {','.join(MODALITIES)}")
    im.add_argument("--slice", default=d.slice, help="max-tumor | random-tumor (seeded; any slice with >= 25%% of the largest tumour area) | max-brain | center | an axial index")
    im.add_argument("--fit", default=d.fit, choices=["pad", "resize"], help="pad (lossless, 240 -> 256) or resize")
    im.add_argument("--layout", default=None, choices=["brats2020", "brats2021", "brats2023"],
                    help="BraTS release layout (default: detected from the case folder names)")
    im.add_argument("--skip-invalid", action="store_true", help="skip bad cases (listed in DIR/rejected.csv)")
    im.add_argument("--force", action="store_true", help="replace an output folder that already holds data")
    im.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    im.set_defaults(func=_cmd_import)

    de = data.add_parser("default", help="recreate the shipped default dataset (params.yaml: data)")
    de.add_argument("--params", default="params.yaml", help="parameter file whose `data` section describes the dataset")
    de.add_argument("--out", default=None, help="output folder (default: params data.out)")
    de.add_argument("--force", action="store_true", help="replace an existing dataset")
    de.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    de.set_defaults(func=_cmd_default)


def _dataset_commands(sub) -> None:
    """`mrisynth validate | export`: checking and converting an imported dataset."""
    from mrisynth.config import AugmentParams

    va = sub.add_parser("validate", help="run the Great Expectations suite over an imported dataset")
    va.add_argument("dir", help="an imported dataset folder (with manifest.csv)")
    va.add_argument("--train", type=int, help="expected training count (default: as recorded in DIR/dataset.json)")
    va.add_argument("--val", type=int, help="expected validation count (default: as recorded)")
    va.add_argument("--test", type=int, help="expected test count (default: as recorded)")
    va.add_argument("--size", type=int, help="expected side in pixels (default: as recorded)")
    va.add_argument("--channels", type=int, help="expected channels (default: as recorded)")
    va.add_argument("--docs", help="GX project folder for Data Docs (default: <DIR>/../reports/gx_docs)")
    va.set_defaults(func=_cmd_validate)

    ex = sub.add_parser("export", help="write an imported dataset (and an augmented arm) as nnU-Net v2, MONAI or plain NIfTI")
    ex.add_argument("dir", help="imported dataset folder (manifest.csv), e.g. data")
    ex.add_argument("--format", required=True, choices=["nnunet", "monai", "nifti"])
    ex.add_argument("--out", required=True, help="output folder (nnunet: nnUNet_raw; the dataset goes to OUT/DatasetNNN_NAME)")
    ex.add_argument("--arm", default="none", choices=ARMS,
                    help="training set: the real slices (none) or an augmented arm from --augmented")
    augmented = AugmentParams().out_dir
    ex.add_argument("--augmented", default=augmented, help=f"augmented set of the arms (default: params augment.out_dir, {augmented})")
    ex.add_argument("--dataset-id", type=int, default=501, help="nnU-Net dataset id (default 501)")
    ex.add_argument("--name", default="MriSynth", help="nnU-Net dataset name (default MriSynth)")
    ex.add_argument("--force", action="store_true", help="replace an existing export")
    ex.set_defaults(func=_cmd_export)


def _model_commands(sub) -> None:
    """`mrisynth promote | generate | serve`: using registered generators."""
    pr = sub.add_parser("promote", help="move alias champion to a better generator version")
    pr.add_argument("--version", help="candidate version (default: alias challenger)")
    pr.add_argument("--force", action="store_true", help="promote even if not better (metric and signature still required)")
    pr.add_argument("--name", help="registered model (default: params train_gan.registry_name)")
    pr.add_argument("--params", default="params.yaml")
    pr.set_defaults(func=_cmd_promote)

    ge = sub.add_parser("generate", help="render images for label masks with a registered generator")
    ge.add_argument("--model", required=True, help="e.g. models:/mrisynth-generator@champion")
    ge.add_argument("--masks", required=True, help="folder of uint8 label TIFFs")
    ge.add_argument("--brain", help="folder of brain-mask TIFFs with the same names (default: the split's images)")
    ge.add_argument("--out", required=True)
    ge.set_defaults(func=_cmd_generate)

    se = sub.add_parser("serve", help="serve a registered generator over HTTP (validated, bounded; no code from the artifact store runs)")
    se.add_argument("--model", required=True, help="e.g. models:/mrisynth-generator@champion")
    se.add_argument("--host", default="127.0.0.1")
    se.add_argument("--port", type=int, default=5001)
    se.add_argument("--max-batch", type=int, default=16, help="most images per request; more -> HTTP 413 (default 16)")
    se.add_argument("--max-bytes", type=int, default=None,
                    help="largest request body; larger -> HTTP 413 before reading it (default: max-batch images of JSON)")
    se.add_argument("--body-timeout", type=float, default=30.0,
                    help="seconds for a request's whole body to arrive; slower -> HTTP 408 (default 30)")
    se.add_argument("--batch-wait-ms", type=float, default=5.0,
                    help="concurrent requests arriving within this many ms share one model call, up to --max-batch images (default 5)")
    se.set_defaults(func=_cmd_serve)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except MrisynthError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
