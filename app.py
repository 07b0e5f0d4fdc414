"""MD-Net FBP web app (Gradio). Placeholder page until the analysis UI lands.

Run ``python app.py``; it serves on 127.0.0.1:7860 (``GRADIO_SERVER_NAME`` and
``GRADIO_SERVER_PORT`` override). The UI only talks to :mod:`mdnet.service`.
"""

from __future__ import annotations

import gradio as gr

from mdnet import service

ABOUT = """
# MD-Net facial beauty prediction

A Mamba-Diffusion Network that predicts the SCUT-FBP5500 beauty score (1-5): the mean
judgement of that dataset's raters, on Asian and Caucasian adults. It is not an
objective measure of anyone's worth.
"""


def build_demo(status: service.ModelStatus | None = None) -> gr.Blocks:
    status = status or service.load_model()
    with gr.Blocks(title="MD-Net FBP") as demo:
        gr.Markdown(ABOUT)
        gr.Markdown(f"**Status:** {status.message}", elem_id="model-status")
    return demo


if __name__ == "__main__":
    build_demo().launch()
