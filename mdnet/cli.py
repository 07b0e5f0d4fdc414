"""``mdnet <job>``: one command for every job (also ``python -m mdnet <job>``).

Each job lives in its own module with a ``main(argv, prog)`` that parses the job's flags; this
file only names the jobs and hands the rest of the command line over, importing a job's module
when it is asked for (so ``mdnet --help`` starts fast). Exit codes: 0 on success, 2 for a
usage error or an input the job cannot use (with a one-line ``error: ...`` message).
"""

from __future__ import annotations

import argparse
import importlib
import os
import runpy
import sys
from pathlib import Path

# job name -> (module with ``main(argv, prog)``, one line for ``mdnet --help``)
JOBS: dict[str, tuple[str, str]] = {
    "predict": ("mdnet.predict", "score the faces in photos and folders (CSV or JSON)"),
    "explain": ("mdnet.explain.cli", "explain one photo's score: attention, Integrated Gradients, ablation, regions"),
    "serve": ("mdnet.cli", "start the Gradio app (the same as `python app.py`)"),
    "evaluate": ("mdnet.training.evaluate", "PC / MAE / RMSE of a checkpoint on a SCUT-FBP5500 split"),
    "train": ("mdnet.training.train", "train MD-Net on SCUT-FBP5500 (Accelerate, resumable)"),
    "pretrain-prior": ("mdnet.training.pretrain_prior", "pretrain the generative prior (a latent diffusion model)"),
    "pretrain-vim": ("mdnet.training.pretrain_vim", "masked pretraining of the Vim stream on faces (no labels)"),
    "distill": ("mdnet.training.distill", "distil a checkpoint into the fast student (live webcam, --fast)"),
    "baseline": ("mdnet.training.baseline", "fine-tune the ImageNet MobileNetV2 baseline"),
    "model-card": ("mdnet.training.model_card", "write a checkpoint's model card from its training runs"),
    "calibrate": ("mdnet.uncertainty.calibrate", "calibrate the intervals of a checkpoint's scores and its warning"),
    "score-distribution": ("mdnet.percentiles", "store the training scores' quantiles beside a checkpoint"),
    "align-folder": ("mdnet.faces.unlabeled", "align a folder of unlabeled faces (UTKFace) into the crop cache"),
}
APP = Path(__file__).resolve().parent.parent / "app.py"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mdnet",
        description="MD-Net facial beauty prediction: score photos, explain scores, train and evaluate models, "
                    "serve the app.",
        epilog="Run `mdnet <job> --help` for a job's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    jobs = parser.add_subparsers(title="jobs", metavar="<job>", dest="job")
    for name, (_, help_text) in JOBS.items():
        jobs.add_parser(name, help=help_text, add_help=False)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mdnet-fbp")
    except PackageNotFoundError:
        return "(not installed)"


def serve(argv: list[str] | None = None, prog: str | None = None) -> None:
    """``mdnet serve``: run ``app.py`` (the Space's entry point) with the options as its environment."""
    parser = argparse.ArgumentParser(prog=prog, description="Start the Gradio app (the same as `python app.py`).")
    parser.add_argument("--host", default=None, help="address to listen on (GRADIO_SERVER_NAME; 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (GRADIO_SERVER_PORT; 7860)")
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint folder or hub id (MDNET_CHECKPOINT; the shipped one)")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="model calls at once, per kind (MDNET_APP_CONCURRENCY; 2)")
    args = parser.parse_args(argv)
    for value, name in ((args.host, "GRADIO_SERVER_NAME"), (args.port, "GRADIO_SERVER_PORT"),
                        (args.checkpoint, "MDNET_CHECKPOINT"), (args.concurrency, "MDNET_APP_CONCURRENCY")):
        if value is not None:
            os.environ[name] = str(value)
    if not APP.is_file():
        parser.exit(2, f"error: the app ({APP.name}) is not beside this copy of the package; run `mdnet serve` from a "
                       "checkout of the repository (pip install -e .)\n")
    runpy.run_path(str(APP), run_name="__main__")



def run(argv: list[str] | None = None) -> object:
    """Dispatch ``mdnet <job> [options]`` to the job's own ``main``; returns what the job returns."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if not argv or argv[0].startswith("-"):
        parser.parse_args(argv)  # --help / --version exit here; anything else is a usage error
        parser.print_help(sys.stderr)
        parser.exit(2, "\nerror: name a job\n")
    job = argv[0]
    if job not in JOBS:
        parser.error(f"unknown job {job!r}; choose one of: {', '.join(JOBS)}")
    prog = f"mdnet {job}"
    if job == "serve":
        return serve(argv[1:], prog=prog)
    module = importlib.import_module(JOBS[job][0])
    return module.main(argv[1:], prog=prog)


def main(argv: list[str] | None = None) -> int:
    """The ``mdnet`` console script: run the job, exit 0 (errors exit earlier, with their own code)."""
    run(argv)
    return 0
