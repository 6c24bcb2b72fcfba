"""Pictures: mask overlays, image / truth / prediction grids, instances, training curves.

Every function returns a ``matplotlib.figure.Figure`` built without pyplot (no global state, no
window, safe on headless machines); a notebook shows the returned figure, a script saves it with
``fig.savefig(path)``. Class ids are coloured with the fixed :data:`PALETTE` (PASCAL VOC colours:
0 black, 255 = ignore cream), so a class keeps its colour in every picture.
"""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator

from segkeras.data.core import IGNORE_LABEL
from segkeras.data.images import PALETTE, to_rgb
from segkeras.errors import SegkerasError

__all__ = ["PALETTE", "colorize", "overlay", "prediction_grid", "instance_overlay",
           "training_curves"]


def colorize(mask: np.ndarray) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 RGB in :data:`PALETTE` colours."""
    mask = np.asarray(mask)
    if mask.size and (mask.min() < 0 or mask.max() > IGNORE_LABEL):
        raise SegkerasError(
            f"mask values must be class ids 0..255, found {mask.min()}..{mask.max()}")
    return PALETTE[mask.astype(np.intp)]


def blend(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image with every non-background pixel tinted by its class colour (uint8 RGB)."""
    image = _as_rgb(image)
    mask = _label_map(mask, image.shape[:2])
    tinted = (1.0 - alpha) * image + alpha * colorize(mask)
    return np.where((mask > 0)[..., None], tinted, image).round().astype(np.uint8)


def overlay(image, mask, class_names: list[str] | None = None, alpha: float = 0.5) -> Figure:
    """One image with its semantic mask blended on top, and a legend of the classes present."""
    figure = Figure(figsize=(5, 5), layout="constrained")
    axes = figure.subplots()
    axes.imshow(blend(image, mask, alpha))
    axes.set_axis_off()
    _legend(figure, [mask], class_names, background=False)  # the background is not tinted
    return figure


def prediction_grid(images, masks, predictions=None, class_names: list[str] | None = None,
                    max_images: int = 6) -> Figure:
    """Rows of image | true mask | predicted mask (colour-coded class ids).

    ``predictions`` may be class ids (N, H, W) or per-class scores or logits (N, H, W, C), which
    are turned into ids with argmax. At most ``max_images`` rows are drawn.
    """
    count = min(len(images), max_images)
    if count == 0:
        raise SegkerasError("prediction_grid needs at least one image")
    if len(masks) < count:
        raise SegkerasError(f"{len(images)} images but {len(masks)} masks")
    columns = [("image", images), ("truth", masks)]
    if predictions is not None:
        if len(predictions) < count:
            raise SegkerasError(f"{len(images)} images but {len(predictions)} predictions")
        columns.append(("prediction", [_class_ids(p) for p in predictions[:count]]))
    figure = Figure(figsize=(2.6 * len(columns), 2.6 * count + 0.6), layout="constrained")
    axes = figure.subplots(count, len(columns), squeeze=False)
    shown = []
    for row in range(count):
        image = _as_rgb(images[row])
        for column, (title, values) in enumerate(columns):
            ax = axes[row, column]
            if column == 0:
                ax.imshow(image)
            else:
                labels = _label_map(values[row], image.shape[:2])
                shown.append(labels)
                ax.imshow(colorize(labels), interpolation="nearest")
            ax.set_axis_off()
            if row == 0:
                ax.set_title(title)
    _legend(figure, shown, class_names)
    return figure


def instance_overlay(image, instances, class_names: list[str] | None = None, scores=None,
                     alpha: float = 0.5) -> Figure:
    """Each instance mask in its own colour (tab10), with its box and class name (and score).

    ``instances``: a :class:`segkeras.data.core.Instances` (or anything with ``masks`` (N, H, W),
    ``boxes`` (N, 4) as x1, y1, x2, y2 and ``class_ids`` (N,)).
    """
    image = _as_rgb(image)
    masks = np.asarray(instances.masks, dtype=bool)
    boxes, class_ids = np.asarray(instances.boxes), np.asarray(instances.class_ids)
    if not len(masks) == len(boxes) == len(class_ids):
        raise SegkerasError(f"instances disagree: {len(masks)} masks, {len(boxes)} boxes, "
                            f"{len(class_ids)} class ids")
    if len(masks) and masks.shape[1:] != image.shape[:2]:
        raise SegkerasError(f"image shape {image.shape} does not match instance masks "
                            f"{masks.shape}; masks must be (N, H, W) of the image")
    picture = image.astype(np.float64)
    tab10 = np.array(colormaps["tab10"].colors) * 255.0
    colors = [tab10[index % len(tab10)] for index in range(len(masks))]
    for mask, color in zip(masks, colors, strict=True):
        picture[mask] = (1.0 - alpha) * picture[mask] + alpha * color
    figure = Figure(figsize=(5, 5), layout="constrained")
    axes = figure.subplots()
    axes.imshow(picture.round().astype(np.uint8))
    for index, ((x1, y1, x2, y2), class_id, color) in enumerate(
            zip(boxes, class_ids, colors, strict=True)):
        edge = color / 255.0
        # pixel i covers [i - 0.5, i + 0.5] in imshow coordinates
        axes.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False,
                                 edgecolor=edge, linewidth=1.5))
        label = _class_name(int(class_id), class_names)
        if scores is not None:
            label += f" {float(scores[index]):.2f}"
        above = y1 >= 0.06 * image.shape[0]  # else the label would leave the picture
        axes.text(x1 - 0.5, y1 - 1.5 if above else y1 - 0.5, label, fontsize=8, color="white",
                  va="bottom" if above else "top",
                  bbox={"facecolor": edge, "edgecolor": "none", "pad": 1.0})
    axes.set_xlim(-0.5, image.shape[1] - 0.5)
    axes.set_ylim(image.shape[0] - 0.5, -0.5)
    axes.set_axis_off()
    return figure


def training_curves(history, metrics: list[str] | None = None) -> Figure:
    """One panel per metric: training (solid) and validation (dashed) value per epoch.

    ``history``: what ``model.fit`` returns (a ``keras.callbacks.History``) or its ``.history``
    dict. ``metrics``: names to plot (default: every logged metric except the learning rate).
    """
    logs = getattr(history, "history", history)
    if not isinstance(logs, dict) or not logs:
        raise SegkerasError("history must be a keras History or a non-empty dict of metric lists")
    available = [name for name in logs if not name.startswith("val_")]
    if metrics is None:
        metrics = [name for name in available if name not in ("learning_rate", "lr")]
    unknown = [name for name in metrics if name not in logs]
    if unknown:
        raise SegkerasError(f"no metric {', '.join(unknown)} in the history; it has "
                            f"{', '.join(available)}")
    figure = Figure(figsize=(4.0 * len(metrics), 3.2), layout="constrained")
    for ax, name in zip(figure.subplots(1, len(metrics), squeeze=False)[0], metrics,
                        strict=True):
        values = logs[name]
        epochs = np.arange(1, len(values) + 1)
        ax.plot(epochs, values, marker="o", markersize=3, label="training")
        if f"val_{name}" in logs:
            ax.plot(epochs[: len(logs[f"val_{name}"])], logs[f"val_{name}"], linestyle="--",
                    marker="o", markersize=3, label="validation")
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    return figure


def _as_rgb(image) -> np.ndarray:
    """uint8 RGB for display: float images are taken as [0, 255] and clipped."""
    image = to_rgb(np.asarray(image))
    if image.dtype != np.uint8:
        image = np.clip(np.asarray(image, dtype=np.float64), 0, 255).round().astype(np.uint8)
    return image


def _class_ids(prediction) -> np.ndarray:
    """(H, W) ids from ids or from (H, W, C) scores."""
    prediction = np.asarray(prediction)
    return prediction.argmax(axis=-1) if prediction.ndim == 3 else prediction


def _label_map(mask, shape: tuple) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.shape != tuple(shape):
        raise SegkerasError(f"image shape {tuple(shape)} does not match mask shape {mask.shape}; "
                            "the mask must have the image's height and width")
    return mask


def _class_name(class_id: int, class_names: list[str] | None) -> str:
    if class_id == IGNORE_LABEL:
        return "ignore"
    if class_names is not None and class_id < len(class_names):
        return class_names[class_id]
    return f"class {class_id}"


def _legend(figure: Figure, masks: list, class_names: list[str] | None,
            background: bool = True) -> None:
    """A legend with a colour patch for every class id that appears in ``masks``."""
    present = sorted(set().union(*(np.unique(np.asarray(mask)).tolist() for mask in masks)))
    if not background:
        present = [class_id for class_id in present if class_id != 0]
    if not present:
        return
    handles = [Patch(facecolor=PALETTE[class_id] / 255.0, edgecolor="gray",
                     label=_class_name(class_id, class_names)) for class_id in present]
    figure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6),
                  frameon=False)
