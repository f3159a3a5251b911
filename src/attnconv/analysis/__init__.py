"""See what attention learned (PAPER section 5): record maps, measure locality, draw figures.

* :mod:`attnconv.analysis.record`: :func:`record_attention` (every layer's maps on its actual
  input, through temporary wrappers), :func:`positional_attention` (no image needed).
* :mod:`attnconv.analysis.metrics`: mean attention distance, entropy, convolution-likeness per
  head; :func:`compute_locality` (``attnconv locality``).
* :mod:`attnconv.analysis.figures`: the paper's figures as PNG + PDF (``attnconv figures``);
  imported on demand because it loads matplotlib.
"""

from attnconv.analysis.metrics import (
    attention_entropy,
    compute_locality,
    conv_likeness,
    gaussian_widths,
    mean_distance,
    most_attended_offset,
    offset_mass,
)
from attnconv.analysis.record import (
    attention_layers,
    eval_mode,
    load_test_images,
    positional_attention,
    record_attention,
    token_grid,
    token_stride,
)

__all__ = [
    "attention_entropy",
    "attention_layers",
    "compute_locality",
    "conv_likeness",
    "eval_mode",
    "gaussian_widths",
    "load_test_images",
    "mean_distance",
    "most_attended_offset",
    "offset_mass",
    "positional_attention",
    "record_attention",
    "token_grid",
    "token_stride",
]
