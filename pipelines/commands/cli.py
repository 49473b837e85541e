"""The `atlas` command: a thin shell over the pipelines. User errors print one line and exit 2."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from atlas.config import (
    AtlasConfig,
    ExperimentConfig,
    ModelConfig,
    check_files,
    check_model_files,
    load_config,
    packaged_default_config,
    parse_assignment,
    validate_tree,
)
from atlas.dependency_warnings import silence_dependency_warnings
from atlas.errors import AtlasError
from atlas.models.specs import SPEC_HELP
from atlas.runtime import MALLOC_ENVIRON, tune_allocator

DEFAULT_CONFIG = Path("configs") / "default.yaml"


def _default_config() -> Path:
    """configs/default.yaml in the working folder (a project's own), else the one that ships inside the package."""
    return DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else packaged_default_config()


def _run(args: argparse.Namespace) -> int:
    """``atlas run`` is :func:`atlas.run` with the flags as arguments: flag values are strings, and go into the config
    as given, never through YAML (``--layer 3``); ``--set`` values are read as YAML."""
    from atlas_pipelines.api import run

    run(
        args.config if args.config is not None else _default_config(),
        settings=list(args.set or []), model=args.model, layer=args.layer, images=args.images, name=args.name,
        out=args.out, scheduler=args.scheduler, until=args.until,
    )  # fmt: skip
    return 0


def _experiment(args: argparse.Namespace, first: Sequence[tuple[str, Any]] = ()) -> ExperimentConfig:
    """The experiment YAML with ``first`` and then ``--set`` applied (so ``--set compare.models.NAME.KEY=VALUE`` adds
    to a model ``--model`` named), its files checked, the compared models' included."""
    values = [*first, *(parse_assignment(text) for text in args.set or [])]
    config: ExperimentConfig = load_config(args.config, (), ExperimentConfig, values)
    check_files(config)
    for section in (config.compare.models or {}).values():
        check_model_files(section)
    return config


def _train(args: argparse.Namespace) -> int:
    from contextlib import ExitStack

    from atlas.devices import resolve_device
    from atlas_pipelines.commands.train import experiment_dir, run_training
    from atlas_pipelines.engine.executor import LazyExecutor

    config = _experiment(args)
    with ExitStack() as stack:
        run_training(config, LazyExecutor(config.scheduler, stack, print, resolve_device(config.device)))
    print(
        f"atlas: trained variants in {experiment_dir(config) / 'train'}; compare them with: atlas compare {shlex.quote(str(args.config))}"
    )
    return 0


def _compare(args: argparse.Namespace) -> int:
    from atlas_pipelines.commands.compare import run_compare
    from atlas_pipelines.commands.compare_models import model_option

    if args.config is None and not args.model:
        raise AtlasError(
            "atlas compare: give an experiment YAML (e.g. configs/compare_activations.yaml) or two or more --model NAME=SPEC:LAYER"
        )
    first: list[tuple[str, Any]] = []
    if args.model:  # the models named here replace the config's compare.models
        first.append(("compare.models", dict(model_option(text) for text in args.model)))
        if args.config is None:
            first.append(("output.name", "compare"))  # --set output.name, applied after, still wins
    config = _experiment(args, first)
    run_compare(config)
    return 0


def _classes(args: argparse.Namespace) -> int:
    from atlas.bundle import Bundle
    from atlas.config import parse_assignment
    from atlas_pipelines.commands.classes import build_classes, parent_config

    assignments = [parse_assignment(text) for text in args.set or []]
    if args.classes or args.compare:  # classes named on the command line replace the config's lists
        assignments.append(("classes.classes", "all" if args.classes == ["all"] else list(args.classes or [])))
        assignments.append(("classes.pairs", [list(pair) for pair in args.compare or []]))
    parent_config(Bundle(args.run_dir), assignments)  # a bad key fails here, before the bundle is locked (written)
    index = build_classes(args.run_dir, assignments)
    built = sum(1 for c in index["classes"] if c["folder"]) + len(index["pairs"])
    print(
        f"atlas: {built} class atlas(es) and comparison(s) in {args.run_dir}; view them with: atlas serve {shlex.quote(str(args.run_dir))}"
    )
    return 0


def _dictionary(args: argparse.Namespace) -> int:
    from atlas.config import parse_assignment
    from atlas_pipelines.commands.dictionary import add_dictionary

    root = add_dictionary(args.run_dir, [parse_assignment(text) for text in args.set or []])
    print(f"atlas: dictionary in {root / 'dictionary'}; read it with atlas.open_bundle({str(root)!r}).dictionary()")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from atlas.viewer.serve import serve

    try:
        serve(args.run_dir, args.host, args.port, args.verbose, args.cache)
    except KeyboardInterrupt:
        print("atlas: server stopped", file=sys.stderr)
    return 0


def _layers(args: argparse.Namespace) -> int:
    from atlas.config import apply_assignment, parse_assignment
    from atlas.models import format_layers, list_layers, load_model
    from atlas.models.layout_reading import layer_readings

    tree: dict = {"model": {"spec": args.spec}}
    for text in args.set or []:
        key, value = parse_assignment(text)
        if not key.startswith("model."):
            raise AtlasError(f"--set {text!r}: `atlas layers` takes only model.* keys")
        apply_assignment(tree, key, value)  # the whole key, so that an error names it as the user typed it
    model_config: ModelConfig = validate_tree(tree, AtlasConfig).model
    check_model_files(model_config)
    model = load_model(model_config)
    infos = list_layers(model)
    print(format_layers(infos, layer_readings(model, infos)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atlas", description="Activation atlases for trained PyTorch CNNs.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="collect, lay out and grid one layer's activations into outputs/NAME/")
    run.add_argument("config", nargs="?", type=Path, help=f"YAML config (default: {DEFAULT_CONFIG} here, else the packaged default)")
    run.add_argument("--model", help=f"model spec: {SPEC_HELP}")
    run.add_argument(
        "--layer", action="append", help="layer name (see `atlas layers SPEC`); repeat it for one atlas per layer, the first the main one"
    )
    run.add_argument("--images", help="image source: a folder, builtin:photos, torchvision:FashionMNIST[?split=test]")
    run.add_argument("--name", help="bundle name (default: the config file's name)")
    run.add_argument("--out", help="parent folder of the bundle (default: outputs)")
    run.add_argument("--scheduler", help="'local' (default), 'sync', or tcp://HOST:PORT of a running Dask scheduler")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. collect.n_images=200")
    run.add_argument("--until", metavar="STAGE", help="stop after this stage (re-run later to continue; an unknown name lists the stages)")
    run.set_defaults(handler=_run)

    layers = sub.add_parser("layers", help="list a model's layers with their output shapes")
    layers.add_argument("spec", help=f"model spec: {SPEC_HELP}")
    layers.add_argument("--set", action="append", metavar="model.KEY=VALUE", help="e.g. model.weights=w.pt")
    layers.set_defaults(handler=_layers)

    train = sub.add_parser("train", help="train one architecture once per activation function (resumable)")
    train.add_argument("config", type=Path, help="experiment YAML, e.g. configs/compare_activations.yaml")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. train.epochs=1")
    train.set_defaults(handler=_train)

    compare = sub.add_parser(
        "compare", help="compare trained variants (training what is missing) or any models: aligned atlases, CKA, probes, one page"
    )
    compare.add_argument("config", type=Path, nargs="?", help="experiment YAML, e.g. configs/compare_activations.yaml")
    compare.add_argument(
        "--model",
        action="append",
        metavar="NAME=SPEC:LAYER",
        help="a model to compare (repeatable; replaces compare.models): any spec atlas run takes, then its layer after the last ':'",
    )
    compare.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. grid.sizes=[8]")
    compare.set_defaults(handler=_compare)

    classes = sub.add_parser("classes", help="class atlases and two-class comparisons (with the patch experiment) of a finished bundle")
    classes.add_argument("run_dir", metavar="RUN_DIR", help="a bundle folder written by atlas run, e.g. outputs/default")
    classes.add_argument(
        "--class",
        dest="classes",
        action="append",
        metavar="NAME_OR_INDEX",
        help="a class atlas (repeatable; 'all': every class with enough rows)",
    )
    classes.add_argument("--compare", nargs=2, action="append", metavar=("A", "B"), help="a two-class comparison (repeatable)")
    classes.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key, e.g. classes.select=top_k, classes.grid=6")
    classes.set_defaults(handler=_classes)

    dictionary = sub.add_parser("dictionary", help="train a sparse dictionary (TopK SAE) of a finished bundle's layer")
    dictionary.add_argument("run_dir", metavar="RUN_DIR", help="a bundle folder written by atlas run, e.g. outputs/default")
    dictionary.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a key, e.g. dictionary.k=16, dictionary.steps=5000"
    )
    dictionary.set_defaults(handler=_dictionary)

    serve = sub.add_parser("serve", help="serve a run folder's atlas viewer on a local address")
    serve.add_argument(
        "run_dir", metavar="RUN_DIR", help="a bundle folder, e.g. outputs/default, or a bundle URL (s3://..., copied down first)"
    )
    serve.add_argument("--cache", type=Path, help="where a bundle URL is copied to (default: ~/.cache/atlas/bundles/...)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, help="port (default: 8000 or the next free one; 0 for any free port)")
    serve.add_argument("--verbose", action="store_true", help="log every request")
    serve.set_defaults(handler=_serve)
    return parser


LINE_BREAKS = {ord(c): c.encode("unicode_escape").decode() for c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"}


def one_line(message: str) -> str:
    """A user error is one line, whatever it quotes: line breaks in a path or a value are shown escaped (``\\n``),
    and so are lone surrogates (bytes of a file name that are not UTF-8), which a UTF-8 terminal cannot print."""
    return message.encode("utf-8", "backslashreplace").decode("utf-8").translate(LINE_BREAKS)


def main(argv: Sequence[str] | None = None) -> int:
    tune_allocator()
    silence_dependency_warnings()
    for key, value in MALLOC_ENVIRON.items():  # worker processes read these at start-up
        os.environ.setdefault(key, value)
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except AtlasError as err:
        print(f"atlas: error: {one_line(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("atlas: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
