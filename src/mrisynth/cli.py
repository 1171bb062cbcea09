"""`mrisynth` command line. Errors meant for users print one readable line (`error: ...`) and exit 2."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from mrisynth import MODALITIES
from mrisynth.core.arms import ARMS
from mrisynth.errors import MrisynthError

DESCRIPTION = (
    "Grow a small brain-MRI tumour dataset with a conditional GAN and check whether the synthetic slices help a "
    "tumour segmenter. These commands make or import BraTS-format data, validate and export it, and use the "
    "trained generators: promote the best one to @champion, render images for your own label masks, or serve it "
    "over HTTP. Training and evaluation run as the DVC pipeline (`dvc repro`); each command's --help has examples."
)

EXAMPLES = {
    "mrisynth": """\
examples:
  mrisynth data default          # recreate the shipped phantom dataset in data/
  mrisynth validate data         # check an imported dataset (Great Expectations)
  dvc repro                      # train the GAN and the segmenters, write reports/table1.md
  mrisynth promote               # make @challenger the @champion if it is better on validation
  mrisynth generate --model models:/mrisynth-generator@champion --masks data/test/masks --out generated/
  mrisynth serve --model models:/mrisynth-generator@champion --port 5001""",
    "data": """\
examples:
  mrisynth data default          # the shipped dataset (params.yaml `data`) in data/
  mrisynth data phantom raw --cases 4   # 4 phantom cases in the BraTS 2020 layout in raw/
  mrisynth data import raw --out mydata --train 2 --val 1 --test 1
  mrisynth data card mydata      # grades, sub-regions, areas and contrasts""",
    "validate": """\
examples:
  mrisynth validate data
  mrisynth validate mydata --docs /tmp/gx   # write the Data Docs elsewhere""",
    "export": """\
examples:
  mrisynth export data --format nnunet --out nnUNet_raw
  mrisynth export data --format nifti --out exported --arm classic+gan   # after `dvc repro augment`""",
    "promote": """\
examples:
  mrisynth promote                       # judge @challenger (the latest train_gan) against @champion
  mrisynth promote --version 3           # judge version 3 instead
  mrisynth promote --version 3 --force   # make version 3 the @champion whatever its metric""",
    "generate": """\
examples:
  mrisynth generate --model models:/mrisynth-generator@champion --masks data/test/masks --out generated/
  mrisynth generate --model models:/mrisynth-generator/2 --masks my_masks --brain my_brains --out generated/  # full synthesis
  mrisynth generate --model models:/mrisynth-generator@champion --masks my_masks --images my_slices --out generated/  # inpainting""",
    "serve": """\
examples:
  mrisynth serve --model models:/mrisynth-generator@champion --port 5001
  mrisynth serve --model models:/mrisynth-generator@challenger --max-batch 4   # while no version is promoted
  curl -s http://127.0.0.1:5001/ping   # the model and the limits""",
    "team": """\
examples:
  mrisynth team up               # then: source .team/env.sh
  mrisynth team status
  mrisynth team down""",
}


def _version() -> str:
    """The installed package's version (its metadata), else the source tree's `mrisynth.__version__`."""
    from importlib import metadata

    try:
        return metadata.version("mrisynth")
    except metadata.PackageNotFoundError:
        import mrisynth

        return getattr(mrisynth, "__version__", "unknown")


class _HelpFormatter(argparse.HelpFormatter):
    """Descriptions are wrapped, examples keep their lines; an option's help ends with its default unless
    it states it already (flags, off by default, and options without a default say nothing)."""

    def _fill_text(self, text, width, indent):
        if text.startswith("examples:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action):
        text = action.help or ""
        if "(default" in text or not action.option_strings or action.default in (None, False, argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


def _add(sub, name: str, help: str, **kwargs) -> argparse.ArgumentParser:  # noqa: A002 - argparse's name
    """A subcommand with the shared formatter, its help as description and its examples as epilog."""
    return sub.add_parser(name, help=help, description=kwargs.pop("description", help), epilog=EXAMPLES.get(name),
                          formatter_class=_HelpFormatter, **kwargs)


def _cmd_phantom(args: argparse.Namespace) -> int:
    from mrisynth.data.ingest import make_phantom

    ids = make_phantom(Path(args.out), args.cases, args.seed, workers=args.workers, version=args.version, force=args.force)
    print(f"wrote {len(ids)} phantom cases ({ids[0]} .. {ids[-1]}) to {args.out}")
    return 0


def _cmd_card(args: argparse.Namespace) -> int:
    from mrisynth.core import datacard
    from mrisynth.io import card

    # progress on stderr (one line per step): stdout stays the card, e.g. for `--json > card.json`
    built = card.build(Path(args.dir), progress=lambda line: print(f"data card: {line}", file=sys.stderr, flush=True))
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
    from mrisynth.data.ingest import check_output, default_recipe, import_brats, make_phantom

    data = load_params(args.params).data
    out = Path(args.out or data.out)
    check_output(out, args.force)  # before minutes of phantom cases, not after
    counts, options, source = default_recipe(data)
    with tempfile.TemporaryDirectory(prefix="mrisynth-phantom-") as raw:
        make_phantom(Path(raw), data.phantom_cases, data.seed, workers=args.workers, version=data.phantom_version)
        manifest = import_brats(Path(raw), out, counts, data.seed, options, force=args.force, workers=args.workers, source_label=source)
    print(f"default dataset: {len(manifest)} slices from {data.phantom_cases} phantom cases (seed {data.seed}) in {out}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from mrisynth.io.gx import dataset_info, validate_dataset, write_static_docs

    counts = None
    if any(v is not None for v in (args.train, args.val, args.test)):
        # a count not given keeps the value recorded at import (DIR/dataset.json), not 0
        recorded = dataset_info(Path(args.dir)).get("counts") or {}
        counts = {s: getattr(args, s) if getattr(args, s) is not None else int(recorded.get(s, 0)) for s in ("train", "val", "test")}
    from mrisynth import paths

    docs_root = Path(args.docs) if args.docs else Path(args.dir).resolve().parent / paths.GX_DOCS
    print(f"validate: Data Docs go to {docs_root} (--docs to choose)")
    report = validate_dataset(Path(args.dir), counts=counts, size=args.size, channels=args.channels, docs_root=docs_root)
    page = docs_root / "validation.html"  # one self-contained page: GX's own Data Docs need a CDN to show anything
    write_static_docs(report, page, page.with_suffix(".md"), source=str(args.dir))
    print(report.summary())
    print(f"validate: every expectation and its result, offline: {page} (and .md)")
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
    if args.decode_workers is not None and not 0 <= args.decode_workers <= 64:
        raise MrisynthError(f"--decode-workers {args.decode_workers}: expected 0 (decode in the request's thread) to 64 processes")
    serve(args.model, args.host, args.port, args.max_batch, args.max_bytes, args.body_timeout, args.batch_wait_ms,
          args.decode_workers)
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from mrisynth.inference.generate import generate
    from mrisynth.io import tracking

    tracking.configure_uri()
    written = generate(args.model, Path(args.masks), Path(args.out), Path(args.brain) if args.brain else None,
                       images_dir=Path(args.images) if args.images else None, force=args.force)
    print(f"wrote {len(written)} images (TIFF + NIfTI) to {args.out}")
    return 0


def _cmd_team(args: argparse.Namespace) -> int:
    from mrisynth.ops import team

    return team.main(args.action, args.repo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mrisynth", description=DESCRIPTION, epilog=EXAMPLES["mrisynth"],
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")
    data = _add(sub, "data", "make or import BraTS-format data")
    _data_commands(data.add_subparsers(dest="data_command", required=True, title="commands", metavar="COMMAND"))
    _dataset_commands(sub)
    _model_commands(sub)
    te = _add(sub, "team", "a local team stack on 127.0.0.1: PostgreSQL, S3 (SeaweedFS), MLflow server (state in .team/)")
    te.add_argument("action", choices=["up", "down", "status"],
                    help="up: start the stack (unless running), write TEAM_DIR/env.sh, set the DVC remote 'team'; down: stop all; status: URIs, up/down")
    te.add_argument("--repo", default=None, help="DVC repository whose .dvc/config.local gets the remote 'team' (default: the current folder)")
    te.set_defaults(func=_cmd_team)
    return parser


def _data_commands(data) -> None:
    """`mrisynth data phantom | card | import | default`."""
    from mrisynth.config import DataParams

    d = DataParams()  # CLI defaults come from the one typed config
    ph = _add(data, "phantom", "write realistic phantom cases in the BraTS 2020 layout")
    ph.add_argument("out", help="output folder (acts as MICCAI_BraTS2020_TrainingData)")
    ph.add_argument("--cases", type=int, default=d.phantom_cases, help="number of cases")
    ph.add_argument("--seed", type=int, default=d.seed, help="random seed; same seed, same bytes")
    ph.add_argument("--workers", type=int, default=2, help="worker processes")
    ph.add_argument("--version", type=int, default=d.phantom_version, choices=[1, 2],
                    help="2: realistic variety (core/phantom_v2.py), 1: the original easy phantom")
    ph.add_argument("--force", action="store_true", help="replace phantom cases written earlier into OUT (nothing else is deleted)")
    ph.set_defaults(func=_cmd_phantom)

    ca = _add(data, "card", "the dataset card of an imported folder: grades, sub-regions, areas, contrasts, threshold baseline")
    ca.add_argument("dir", help="imported dataset folder (with manifest.csv)")
    ca.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    ca.add_argument("--write", action="store_true", help="(re)write DIR/card.json and DIR/card.md")
    ca.set_defaults(func=_cmd_card)

    im = _add(data, "import", "sample, slice and normalise a BraTS 2020/2021/2023 folder into TIFF splits")
    im.add_argument("src", help="BraTS 2020 training folder (or its parent), or a phantom folder")
    im.add_argument("--out", required=True, help="output folder (must be empty unless --force)")
    im.add_argument("--train", type=int, default=d.train, help="training cases")
    im.add_argument("--val", type=int, default=d.val, help="validation cases")
    im.add_argument("--test", type=int, default=d.test, help="test cases")
    im.add_argument("--seed", type=int, default=d.seed, help="split seed")
    im.add_argument("--size", type=int, default=d.image_size, help="output side in pixels")
    im.add_argument("--modalities", default=",".join(d.modalities), help=f"comma-separated, from {','.join(MODALITIES)}")
    im.add_argument("--slice", default=d.slice, help="max-tumor | random-tumor (seeded; any slice with >= 25%% of the largest tumour area) | max-brain | center | an axial index")
    im.add_argument("--fit", default=d.fit, choices=["pad", "resize"], help="pad (lossless, 240 -> 256) or resize")
    im.add_argument("--layout", default=None, choices=["brats2020", "brats2021", "brats2023"],
                    help="BraTS release layout (default: detected from the case folder names)")
    im.add_argument("--skip-invalid", action="store_true", help="skip bad cases (listed in DIR/rejected.csv)")
    im.add_argument("--force", action="store_true", help="replace an output folder that already holds data")
    im.add_argument("--workers", type=int, default=2, help="worker processes")
    im.set_defaults(func=_cmd_import)

    de = _add(data, "default", "recreate the shipped default dataset (params.yaml: data)")
    de.add_argument("--params", default="params.yaml", help="parameter file whose `data` section describes the dataset")
    de.add_argument("--out", default=None, help="output folder (default: params data.out)")
    de.add_argument("--force", action="store_true", help="replace an existing dataset")
    de.add_argument("--workers", type=int, default=2, help="worker processes")
    de.set_defaults(func=_cmd_default)


def _dataset_commands(sub) -> None:
    """`mrisynth validate | export`: checking and converting an imported dataset."""
    from mrisynth.config import AugmentParams

    va = _add(sub, "validate", "run the Great Expectations suite over an imported dataset")
    va.add_argument("dir", help="an imported dataset folder (with manifest.csv)")
    va.add_argument("--train", type=int, help="expected training count (default: as recorded in DIR/dataset.json)")
    va.add_argument("--val", type=int, help="expected validation count (default: as recorded)")
    va.add_argument("--test", type=int, help="expected test count (default: as recorded)")
    va.add_argument("--size", type=int, help="expected side in pixels (default: as recorded)")
    va.add_argument("--channels", type=int, help="expected channels (default: as recorded)")
    va.add_argument("--docs", help="GX project folder for Data Docs (default: <DIR>/../reports/gx_docs)")
    va.set_defaults(func=_cmd_validate)

    ex = _add(sub, "export", "write an imported dataset (and an augmented arm) as nnU-Net v2, MONAI or plain NIfTI")
    ex.add_argument("dir", help="imported dataset folder (manifest.csv), e.g. data")
    ex.add_argument("--format", required=True, choices=["nnunet", "monai", "nifti"], help="target layout")
    ex.add_argument("--out", required=True, help="output folder (nnunet: nnUNet_raw; the dataset goes to OUT/DatasetNNN_NAME)")
    ex.add_argument("--arm", default="none", choices=ARMS,
                    help="training set: the real slices (none) or an augmented arm from --augmented")
    augmented = AugmentParams().out_dir
    ex.add_argument("--augmented", default=augmented, help="augmented set of the arms (default: params augment.out_dir, %(default)s)")
    ex.add_argument("--dataset-id", type=int, default=501, help="nnU-Net dataset id")
    ex.add_argument("--name", default="MriSynth", help="nnU-Net dataset name")
    ex.add_argument("--force", action="store_true", help="replace an existing export")
    ex.set_defaults(func=_cmd_export)


def _model_commands(sub) -> None:
    """`mrisynth promote | generate | serve`: using registered generators."""
    pr = _add(sub, "promote", "move alias champion to a better generator version",
              description="Move alias @champion to the candidate generator version when it beats the current champion on "
                          "params.yaml promote.metric (a validation quantity) and clears promote.margin; the decision is "
                          "written into the version's tags and description.")
    pr.add_argument("--version", type=int, help="candidate version number (default: alias challenger)")
    pr.add_argument("--force", action="store_true", help="promote even if not better (metric and signature still required)")
    pr.add_argument("--name", help="registered model (default: params train_gan.registry_name)")
    pr.add_argument("--params", default="params.yaml", help="parameter file (its promote and train_gan sections)")
    pr.set_defaults(func=_cmd_promote)

    ge = _add(sub, "generate", "render images for label masks with a registered generator",
              description="Render one image per label mask with a registered generator: OUT/<name>.tif (H, W, C) in [0, 1] "
                          "and one NIfTI per modality, OUT/<name>_<modality>.nii.gz.")
    ge.add_argument("--model", required=True, help="registered generator, e.g. models:/mrisynth-generator@champion")
    ge.add_argument("--masks", required=True, help="folder of uint8 label TIFFs")
    ge.add_argument("--brain", help="folder of brain-mask TIFFs with the same names (default: from the images)")
    ge.add_argument("--images", help="folder of the real slices, float (H, W, C) TIFFs in [0, 1] with the same names: the context an "
                                     "inpainting generator keeps outside the tumour region (default: the split's images/ beside --masks)")
    ge.add_argument("--out", required=True, help="output folder (created if needed; never a folder that is read)")
    ge.add_argument("--force", action="store_true", help="overwrite files of an earlier run in --out")
    ge.set_defaults(func=_cmd_generate)

    se = _add(sub, "serve", "serve a registered generator over HTTP (validated, bounded; no code from the artifact store runs)",
              description="Serve a registered generator over HTTP: POST /invocations {\"inputs\": (N, S, S, 4) conditioning, 9 channels "
                          "for an inpainting generator} "
                          "answers {\"predictions\": (N, S, S, C) images in [0, 1]}; GET /ping reports the model and the "
                          "limits. Input is validated and bounded; one access-log line per request goes to stderr.")
    se.add_argument("--model", required=True, help="registered generator, e.g. models:/mrisynth-generator@champion")
    se.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    se.add_argument("--port", type=int, default=5001, help="TCP port")
    se.add_argument("--max-batch", type=int, default=16, help="most images per request; more -> HTTP 413")
    se.add_argument("--max-bytes", type=int, default=None,
                    help="largest request body; larger -> HTTP 413 before reading it (default: max-batch images of JSON)")
    se.add_argument("--body-timeout", type=float, default=30.0,
                    help="seconds for a request's whole body to arrive; slower -> HTTP 408")
    se.add_argument("--batch-wait-ms", type=float, default=5.0,
                    help="concurrent requests arriving within this many ms share one model call, up to --max-batch images")
    se.add_argument("--decode-workers", type=int, default=None,
                    help="processes that decode and validate request JSON side by side; 0: in the request's thread "
                         "(default: one per core, at most 4)")
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
