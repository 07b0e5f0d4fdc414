"""The app builds over mdnet.service and reports the model's state instead of crashing."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

import app
from mdnet import service


def test_missing_checkpoint_is_a_status_not_an_error(tmp_path):
    status = service.load_model(tmp_path / "nothing-here")
    assert not status.ready and "could not be loaded" in status.message
    demo = app.build_demo(status)
    assert isinstance(demo, gr.Blocks)


def test_a_saved_checkpoint_loads_through_the_service(tmp_path, micro):
    micro.save_pretrained(tmp_path / "ckpt")
    status = service.load_model(tmp_path / "ckpt")
    assert status.ready and status.model.cfg.name == "micro"
    assert "loaded" in status.message


def test_app_talks_only_to_the_service():
    source = Path(app.__file__).read_text()
    imports = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert all("mdnet" not in line or line == "from mdnet import service" for line in imports)
