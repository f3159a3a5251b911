"""One report for several training runs: comparison table, figures, locality, explorer links.

:func:`write_report` turns run directories written by ``attnconv train`` into

* ``report.html``: one self-contained page (inline CSS, every figure embedded as a base64 PNG);
* ``report.md`` beside it: the same tables in Markdown, figures linked as files;
* ``report-figures/``: the figures as PNG + PDF (:func:`~attnconv.analysis.figures.figures_for_run`
  per run, one training-curve plot for all runs together);
* optionally an explorer page per self-attention run (:mod:`attnconv.analysis.explorer`),
  linked from both reports by relative links.

The comparison is Table 1 of the paper for *these* runs: test accuracy from ``results.json``,
parameters and multiply-accumulates counted with :mod:`attnconv.flops` at the runs' own image
shape (from the checkpoint's metadata), beside the paper's CIFAR-10 accuracy for the same model.
"""

from __future__ import annotations

import base64
import datetime
import functools
import html
import json
import os
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import torch

from attnconv.atomic import atomic_write_text
from attnconv.errors import ConfigError
from attnconv.textable import markdown_table

DEFAULT_IMAGES = 100
DEFAULT_EXPLORER_IMAGES = 20


# --------------------------------------------------------------------------------------------
# What one run reports
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunSummary:
    """The numbers of one run: results, size and cost at its own image shape.

    ``macs`` counts every matrix product of one forward pass (dense reference attention, the
    paper's operator), ``attention_macs`` the part outside the linear/conv layers, and
    ``paper_flops`` the paper's convention (linear and conv layers only, 2 x MACs).
    """

    path: Path
    name: str
    model: str
    label: str
    dataset: str | None
    image_shape: tuple[int, int, int]
    params: int
    macs: int
    attention_macs: int
    paper_flops: int
    attention_layers: int
    test_accuracy: float
    best_val_accuracy: float | None = None
    best_epoch: int | None = None
    epochs: int | None = None
    train_time_s: float | None = None
    paper_accuracy: float | None = None
    results: dict[str, Any] = field(default_factory=dict, repr=False)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def summarise_run(run_dir: str | Path) -> RunSummary:
    """Read ``results.json`` and the checkpoint's metadata; count the model at its image shape.

    Raises:
        ConfigError: no usable ``results.json`` (an unfinished run).
        CheckpointError: no readable checkpoint.
    """
    from attnconv.analysis.record import attention_layers
    from attnconv.analysis.table1 import PAPER_TABLE1, PaperRow, read_run
    from attnconv.flops import count_macs
    from attnconv.models import create_model
    from attnconv.train.checkpoint import read_meta
    from attnconv.train.model_io import resolve_checkpoint

    run_dir = Path(run_dir)
    result = read_run(run_dir)  # validates model and test_accuracy
    results = json.loads((run_dir / "results.json").read_text("utf-8"))
    meta = read_meta(resolve_checkpoint(run_dir))
    try:
        height, width = (int(v) for v in meta["image_size"])
        channels, classes = int(meta["in_chans"]), int(meta["num_classes"])
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"the checkpoint of {run_dir} lacks its image shape or classes "
                          f"({err}); was it written by 'attnconv train'?") from err
    args = dict(meta.get("model_args") or {})
    size = args.pop("image_size", height if height == width else (height, width))
    with torch.device("meta"):  # shapes only: nothing is allocated or computed
        model = create_model(result.model, num_classes=classes, in_chans=channels,
                             image_size=size, **args)
    cost = count_macs(model, (channels, height, width))
    paper = PAPER_TABLE1.get(result.model, PaperRow(result.model))
    best_epoch = results.get("best_epoch")
    return RunSummary(
        path=run_dir, name=str(results.get("name") or run_dir.name), model=result.model,
        label=paper.label, dataset=result.dataset, image_shape=(channels, height, width),
        params=cost.params, macs=cost.macs, attention_macs=cost.attention_macs,
        paper_flops=cost.paper_convention_flops, attention_layers=len(attention_layers(model)),
        test_accuracy=result.test_accuracy,
        best_val_accuracy=_number(results.get("best_val_accuracy")),
        best_epoch=best_epoch if isinstance(best_epoch, int) else None,
        epochs=results.get("epochs") if isinstance(results.get("epochs"), int) else None,
        train_time_s=_number(results.get("train_time_s")), paper_accuracy=paper.accuracy,
        results=results)


COMPARISON = {"run": "run", "model": "model", "data": "data (C x H x W)", "params": "params",
              "macs": "MACs (all ops)", "attention_macs": "attention MACs",
              "paper_flops": "paper-convention FLOPs", "test_accuracy": "test accuracy",
              "best_val": "best val. accuracy (epoch)", "epochs": "epochs",
              "train_time": "train time", "paper_accuracy": "paper accuracy (CIFAR-10)"}


def comparison_rows(runs: Sequence[RunSummary]) -> list[dict[str, str]]:
    """The comparison table, one row of printed cells per run (keys of :data:`COMPARISON`)."""
    from attnconv.flops import format_count

    rows = []
    for r in runs:
        c, h, w = r.image_shape
        best = "-" if r.best_val_accuracy is None else (
            f"{r.best_val_accuracy:.4f}" + (f" ({r.best_epoch})" if r.best_epoch else ""))
        rows.append({
            "run": r.name,
            "model": r.model if r.label == r.model else f"{r.model} ({r.label})",
            "data": f"{r.dataset or '?'}, {c}x{h}x{w}",
            "params": f"{r.params:,}",
            "macs": format_count(r.macs),
            "attention_macs": format_count(r.attention_macs),
            "paper_flops": format_count(r.paper_flops),
            "test_accuracy": f"{r.test_accuracy:.4f}",
            "best_val": best,
            "epochs": "-" if r.epochs is None else str(r.epochs),
            "train_time": "-" if r.train_time_s is None else
                          f"{r.train_time_s:.{0 if r.train_time_s >= 10 else 1}f} s",
            "paper_accuracy": "-" if r.paper_accuracy is None else f"{r.paper_accuracy:.3f}",
        })
    return rows


# --------------------------------------------------------------------------------------------
# Locality (attnconv locality), per layer
# --------------------------------------------------------------------------------------------
LOCALITY = {"layer": "layer", "heads": "heads", "attention": "attention",
            "mean_distance": "mean distance (tokens)", "mean_distance_px": "(pixels)",
            "entropy": "entropy (nats)", "conv_likeness": "conv-likeness"}


def run_locality(run_dir: str | Path, images: int = DEFAULT_IMAGES,
                 data_dir: str | None = None) -> list[dict[str, Any]]:
    """:func:`~attnconv.analysis.compute_locality` rows of a run; [] without attention.

    Positional-only models need no image; content attention is averaged over the first
    ``images`` test images.
    """
    from attnconv.analysis import attention_layers, compute_locality, load_test_images
    from attnconv.train.model_io import load_model

    model, meta = load_model(run_dir)
    layers = [layer for _, layer in attention_layers(model)]
    if not layers:
        return []
    batch = None
    if any(not layer.positional_only for layer in layers):
        batch, _ = load_test_images(meta, images, data_dir)
    return compute_locality(model, batch, batch_size=50)


def locality_by_layer(rows: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """Per-layer means over the heads of :func:`run_locality`'s rows, as printed cells."""
    out = []
    for layer in sorted({r["layer"] for r in rows}):
        group = [r for r in rows if r["layer"] == layer]
        mean = {k: sum(r[k] for r in group) / len(group)
                for k in ("mean_distance", "mean_distance_px", "entropy", "conv_likeness")}
        kind = group[0]["encoding"] + (" + content" if group[0]["content"] else "")
        out.append({"layer": str(layer), "heads": str(len(group)), "attention": kind,
                    "mean_distance": f"{mean['mean_distance']:.2f}",
                    "mean_distance_px": f"{mean['mean_distance_px']:.1f}",
                    "entropy": f"{mean['entropy']:.2f} / {group[0]['entropy_uniform']:.2f}",
                    "conv_likeness": f"{mean['conv_likeness']:.3f}"})
    return out


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------
CAPTIONS = [
    (r"training_curves", "Validation (solid) and training (dashed) accuracy and loss of every "
                         "run (paper fig. 2)."),
    (r"gaussian_heads_all", "Gaussian heads of every layer: each head's centre relative to the "
                            "query pixel, with its 50% and 90% mass contours (paper fig. 4)."),
    (r"gaussian_heads_layer(\d+)", "Gaussian heads of layer {0}."),
    (r"head_trajectories_all", "Head centres over training, from initialisation (open circle) "
                               "to the end (paper fig. 3)."),
    (r"head_trajectories_layer(\d+)", "Head centres of layer {0} over training."),
    (r"positional_attention(?:_layer(\d+))?", "Positional attention of the centre query pixel, "
                                              "per layer and head."),
    (r"content_attention_image(\d+)", "Attention of the centre query pixel on test image {0}, "
                                      "per layer and head."),
    (r"content_attention_mean(\d+)", "Attention of the centre query pixel averaged over {0} "
                                     "test images."),
    (r"conversion_error", "Theorem 1: error of the attention version of a 3x3 convolution."),
]


def caption(path: Path) -> str:
    """What a figure file of :mod:`attnconv.analysis.figures` shows, from its name."""
    for pattern, text in CAPTIONS:
        match = re.fullmatch(pattern, path.stem)
        if match:
            return text.format(*match.groups())
    return path.stem.replace("_", " ")


def is_detail(path: Path) -> bool:
    """One file per layer: shown folded, the all-layer figure comes first."""
    return re.search(r"_layer\d+$", path.stem) is not None


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------
@dataclass
class RunSection:
    """Everything the report shows about one run."""

    summary: RunSummary
    figures: list[Path] = field(default_factory=list)
    locality: list[dict[str, Any]] = field(default_factory=list)
    explorer: Path | None = None
    slug: str = "run"  # the run's name reduced to [A-Za-z0-9._-]: file names, HTML ids
    tables: list[Any] = field(default_factory=list)  # analysis.sections.RunTable


@dataclass(frozen=True)
class Report:
    """The files :func:`write_report` wrote."""

    html: Path
    markdown: Path
    figures: list[Path]
    explorers: dict[str, Path]
    runs: list[RunSummary]


def _unique_names(runs: Sequence[RunSummary]) -> list[str]:
    names: list[str] = []
    for r in runs:
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", r.name) or "run"
        base, i = name, 2
        while name in names:
            name, i = f"{base}-{i}", i + 1
        names.append(name)
    return names


def relative_link(path: str | Path, start: str | Path) -> str:
    """A link to ``path`` relative to the directory ``start``, safe in HTML and Markdown.

    Always ``./`` followed by percent-encoded path components (only ``A-Za-z0-9_.-~%`` and
    ``/``): a run directory named ``javascript:alert(1)`` becomes ``./javascript%3Aalert%281%29``,
    never a URL with a scheme, and spaces, quotes or parentheses cannot end the link.
    """
    rel = Path(os.path.relpath(Path(path).resolve(), Path(start).resolve())).as_posix()
    return "./" + "/".join(quote(part, safe="") for part in rel.split("/"))


def _relative(path: Path, start: Path) -> str:
    return relative_link(path, start)


# Inline Markdown, raw HTML and GitHub's autolinks ("x:" schemes, "a@b" e-mail): with "[" and
# "]" escaped, parentheses cannot form a link and stay readable in "0.9 (12)".
MD_SPECIAL = frozenset("\\`*_[]<>#!|~&:$@")


def _printable(text: str) -> str:
    """``text`` with control characters (newlines too) as U+FFFD: one line, nothing hidden."""
    return "".join("\ufffd" if unicodedata.category(c) == "Cc" else c for c in str(text))


def md_text(text: str) -> str:
    """``text`` as literal Markdown: no emphasis, link, raw HTML, autolink or table cell break.

    Every character of :data:`MD_SPECIAL` is backslash-escaped (CommonMark and GitHub render
    the character itself) and control characters become U+FFFD, so a name stays on its line.
    """
    text = "".join("\\" + c if c in MD_SPECIAL else c for c in _printable(text))
    return re.sub(r"(?i)\b(www)\.", r"\1\\.", text)  # GitHub links "www.x" on its own


def md_code(text: str) -> str:
    """``text`` as a Markdown code span, fenced by more backticks than it contains."""
    text = _printable(text)
    fence = "`" * (1 + max((len(run) for run in re.findall(r"`+", text)), default=0))
    return f"{fence} {text} {fence}"


def write_report(runs: Sequence[str | Path], out: str | Path, *,
                 images: int = DEFAULT_IMAGES, explorer: bool = False,
                 explorer_images: int = DEFAULT_EXPLORER_IMAGES,
                 explorer_paths: Mapping[str | Path, str | Path] | None = None,
                 explorer_max_mb: float | None = 20.0, data_dir: str | None = None,
                 title: str = "attnconv report") -> Report:
    """Write ``out`` (HTML), the Markdown summary beside it and the figures.

    Args:
        runs: run directories written by ``attnconv train`` (finished: with results.json).
        out: the HTML file; ``report.md`` and ``report-figures/`` go beside it (named after
            its stem).
        images: test images for the content-attention figures and locality.
        explorer: write an explorer page for every run with attention layers (at
            ``explorer_paths[run]``, default ``explorer-RUN.html`` beside ``out``). Without it,
            an ``explorer.html`` already in a run directory is linked.
        explorer_images: test images in each explorer page.
        explorer_paths: where each run's explorer page goes (keys: the run paths as passed).
        explorer_max_mb: size limit of each explorer page (None: no limit).
        data_dir: where the dataset files are (default: each run's own).
        title: the report's title.
    """
    from attnconv.analysis.figures import figures_for_run, plot_training_curves
    from attnconv.analysis.sections import run_tables

    if not runs:
        raise ValueError("pass at least one run directory")
    if images < 1 or explorer_images < 1:
        raise ValueError(f"images and explorer_images must be >= 1, got {images} and "
                         f"{explorer_images}")
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"the report is an HTML file; name it *.html, got {out}")
    root = out.parent
    root.mkdir(parents=True, exist_ok=True)
    figures_dir = root / f"{out.stem}-figures"
    paths = {str(Path(p)): Path(v) for p, v in (explorer_paths or {}).items()}

    summaries = [summarise_run(run) for run in runs]
    names = _unique_names(summaries)
    sections = [RunSection(s) for s in summaries]
    written: list[Path] = []
    curves_runs = [s.path for s in summaries if (s.path / "metrics.jsonl").is_file()]
    curves = plot_training_curves(curves_runs, figures_dir) if curves_runs else []
    written += curves
    explorers: dict[str, Path] = {}
    for run, name, section in zip(runs, names, sections, strict=True):
        s = section.summary
        section.slug = name
        figs = figures_for_run(s.path, figures_dir / name, images=images, data_dir=data_dir)
        written += figs
        section.figures = [p for p in figs if p.suffix == ".png"
                           and not p.stem.startswith("training_curves")]
        section.tables = run_tables(s.path)  # grid coverage, Theorem 1 check
        if s.attention_layers:
            section.locality = run_locality(s.path, images, data_dir)
            target = paths.get(str(Path(run)), root / f"explorer-{name}.html")
            if explorer:
                from attnconv.analysis.explorer import build_explorer

                section.explorer = build_explorer(s.path, target, images=explorer_images,
                                                  data_dir=data_dir,
                                                  max_mb=explorer_max_mb).path
            elif (s.path / "explorer.html").is_file():
                section.explorer = s.path / "explorer.html"
            if section.explorer is not None:
                explorers[s.name] = section.explorer

    curve_png = next((p for p in curves if p.suffix == ".png"), None)
    md_path = out.with_suffix(".md")
    atomic_write_text(md_path, _markdown(title, sections, curve_png, root))
    atomic_write_text(out, _html(title, sections, curve_png, root, md_path))
    return Report(out, md_path, written, explorers, summaries)


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------
NOTES = [
    "MACs: multiply-accumulates of one forward pass on one image of the run's own shape, "
    "every matrix product (torch's FlopCounterMode), the attention products included, with "
    "the dense reference attention (the paper's operator).",
    "Attention MACs: the MACs outside the linear and convolution layers.",
    "Paper-convention FLOPs: the linear and convolution layers only, 2 x MACs, as in the "
    "paper's Table 1 (which omits the attention products).",
    "Paper accuracy: the paper's Table 1 on CIFAR-10 with full-size models; runs on other "
    "data or with smaller models are not comparable to it number for number.",
]


TEXT_COLUMNS = {"run", "model", "data", "attention"}  # left-aligned; numbers go right
TEMPLATES = Path(__file__).with_name("templates")  # report.html.j2, report.md.j2


@dataclass(frozen=True)
class _Table:
    """A table as both templates show it: header labels, per-column class, rows of text."""

    header: list[str]
    classes: list[str]  # "text" (left-aligned) or "num"
    rows: list[list[str]]

    @classmethod
    def of(cls, rows: Sequence[dict[str, str]], header: Mapping[str, str]) -> _Table:
        return cls([header[k] for k in header],
                   ["text" if k in TEXT_COLUMNS else "num" for k in header],
                   [[r[k] for k in header] for r in rows])


@dataclass(frozen=True)
class _Figure:
    """A PNG: linked (Markdown) relative to the report, embedded (HTML) as base64."""

    path: Path
    href: str

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def caption(self) -> str:
        return caption(self.path)

    @property
    def data(self) -> str:
        return base64.b64encode(self.path.read_bytes()).decode("ascii")


def _md_table(table: _Table) -> str:
    """A :class:`_Table` as Markdown, every cell through :func:`md_text`."""
    return "\n".join(markdown_table(
        table.header, [[md_text(c) for c in row] for row in table.rows],
        ["left" if c == "text" else "right" for c in table.classes]))


def _view(title: str, sections: Sequence[RunSection], curves: Path | None, root: Path,
          markdown: Path | None = None) -> dict[str, Any]:
    """What the report shows, once, for both templates (so HTML and Markdown cannot differ)."""
    return {
        "title": title,
        "runs": f"{len(sections)} run{'s' if len(sections) != 1 else ''}",
        "date": datetime.date.today().isoformat(),
        "markdown": None if markdown is None else {"href": _relative(markdown, root),
                                                   "name": markdown.name},
        "explorers": [{"href": _relative(s.explorer, root), "name": s.summary.name}
                      for s in sections if s.explorer is not None],
        "comparison": _Table.of(comparison_rows([s.summary for s in sections]), COMPARISON),
        "notes": NOTES,
        "curves": None if curves is None else _Figure(curves, _relative(curves, root)),
        "sections": [{
            "name": s.summary.name, "model": s.summary.model, "slug": s.slug,
            "path": str(s.summary.path), "accuracy": f"{s.summary.test_accuracy:.4f}",
            "explorer": None if s.explorer is None else {"href": _relative(s.explorer, root),
                                                         "name": s.explorer.name},
            "locality": (_Table.of(locality_by_layer(s.locality), LOCALITY) if s.locality
                         else None),
            "tables": [{"title": t.title, "note": t.note, "table": _Table.of(t.rows, t.header)}
                       for t in s.tables],
            "figures": [_Figure(p, _relative(p, root)) for p in s.figures],
            "main_figures": [_Figure(p, "") for p in s.figures if not is_detail(p)],
            "detail_figures": [_Figure(p, "") for p in s.figures if is_detail(p)],
        } for s in sections],
    }


@functools.cache
def _template(name: str) -> Any:
    """``templates/NAME`` in its environment: autoescaped HTML, or Markdown with the
    ``md_text`` / ``md_code`` / ``md_table`` filters."""
    import jinja2
    import markupsafe

    def stdlib_escape(value: Any) -> Any:
        # Autoescape escapes whatever this returns unless it is Markup: plain text is escaped
        # here with html.escape (quotes as &quot; / &#x27;), everything else by Jinja.
        if isinstance(value, str) and not isinstance(value, markupsafe.Markup):
            return markupsafe.Markup(html.escape(value))
        return value

    html_page = name.endswith(".html.j2")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                             autoescape=html_page, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=not html_page,
                             finalize=stdlib_escape if html_page else None,
                             undefined=jinja2.StrictUndefined)
    env.filters.update(md_text=md_text, md_code=md_code, md_table=_md_table)
    return env.get_template(name)


def _markdown(title: str, sections: Sequence[RunSection], curves: Path | None,
              root: Path) -> str:
    return str(_template("report.md.j2").render(_view(title, sections, curves, root)))


def _html(title: str, sections: Sequence[RunSection], curves: Path | None, root: Path,
          markdown: Path) -> str:
    return str(_template("report.html.j2").render(_view(title, sections, curves, root,
                                                        markdown)))
