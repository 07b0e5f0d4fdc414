"""MD-Net facial beauty prediction: photo -> faces -> model -> explanations -> service / app.

- :mod:`mdnet.faces`: images in, aligned faces out (decoding, MediaPipe detection, the template
  warp) and the SCUT-FBP5500 reader;
- :mod:`mdnet.models`: the network (generative prior, Vision Mamba, fusion, head) and its
  checkpoints;
- :mod:`mdnet.explain`: attention maps, Integrated Gradients, stream ablation, facial regions,
  and their drawings;
- :mod:`mdnet.training`: every job that produces weights or measures them;
- :mod:`mdnet.service`: what the app and the API call; :mod:`mdnet.predict`: batch scoring;
  :mod:`mdnet.cli`: the ``mdnet <job>`` command.

Importing :mod:`mdnet` itself imports nothing heavy; each subpackage loads what it needs.
"""
