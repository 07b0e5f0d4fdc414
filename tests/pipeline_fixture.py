"""A tiny Stable-Diffusion-shaped pipeline folder (unet/, vae/, text_encoder/, tokenizer/).

It stands in for a hub id: diffusers and transformers load a local folder with
the same ``from_pretrained(..., subfolder=...)`` calls they use for the hub.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from mdnet.models.config import get_config

PROMPT_LENGTH = 6


def make_pipeline_folder(root: Path, seed: int = 0) -> Path:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    micro = get_config("micro").prior
    UNet2DConditionModel(**micro.unet).save_pretrained(root / "unet")
    AutoencoderKL(**micro.vae).save_pretrained(root / "vae")
    tok_dir = root / "tokenizer"
    tok_dir.mkdir(parents=True)
    (tok_dir / "vocab.json").write_text(json.dumps({"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "a": 3}))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=PROMPT_LENGTH)
    tokenizer.save_pretrained(tok_dir)
    text_cfg = CLIPTextConfig(
        vocab_size=4, hidden_size=micro.unet["cross_attention_dim"], intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=PROMPT_LENGTH, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )
    CLIPTextModel(text_cfg).save_pretrained(root / "text_encoder")
    return root


def pretrained_config(folder: Path):
    cfg = get_config("micro")
    cfg.prior.source = "pretrained"
    cfg.prior.pretrained = str(folder)
    cfg.prior.unet, cfg.prior.vae = {}, {}
    return cfg
