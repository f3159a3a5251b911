"""Interactive attention explorer: one self-contained HTML page (PAPER section 5, last item).

Pick a test image, a layer and a head (or all heads as a grid), click or hover a query pixel
and see its attention as a heat map over the image; switch between the full attention and the
positional term alone where a layer has both. The page embeds its data (base64 arrays in a
JSON block), its CSS and its JavaScript: it works from ``file://`` without a server or network.

* :func:`build_explorer` -- checkpoint or run directory -> HTML file (``attnconv explore``).
* :func:`collect_explorer_data`, :func:`explorer_html` -- the same for a model in memory.
* :mod:`attnconv.analysis.explorer.encode` -- how maps are stored (uint8 per probability
  relative to its query row's maximum; top-k keys when a size limit requires) and the size
  planner.
"""

from attnconv.analysis.explorer.build import (
    DEFAULT_IMAGES,
    DEFAULT_MAX_MB,
    ExplorerData,
    ExplorerPage,
    LayerInfo,
    build_explorer,
    collect_explorer_data,
    describe_layers,
    estimate_page,
    explorer_html,
    load_explorer_images,
    positional_logits,
)
from attnconv.analysis.explorer.encode import (
    EncodedMaps,
    MapGroup,
    StoragePlan,
    dequantise,
    plan_storage,
    quantise,
)

__all__ = [
    "DEFAULT_IMAGES",
    "DEFAULT_MAX_MB",
    "EncodedMaps",
    "ExplorerData",
    "ExplorerPage",
    "LayerInfo",
    "MapGroup",
    "StoragePlan",
    "build_explorer",
    "collect_explorer_data",
    "dequantise",
    "describe_layers",
    "estimate_page",
    "explorer_html",
    "load_explorer_images",
    "plan_storage",
    "positional_logits",
    "quantise",
]
