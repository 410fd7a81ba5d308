"""Draw docs/demo-heatmaps.png from a finished demo store: images, boxes, and each composite.

    python scripts/demo_figure.py out/demo.zarr docs/demo-heatmaps.png --rows 0 5 9 14

Red is positive relevance, blue negative, each map scaled by its own largest magnitude.
(A full `heatjob render` command is planned; this script makes the README's picture.)
"""

from __future__ import annotations

import argparse

import numpy as np
import zarr
from PIL import Image, ImageDraw

from heatjob.spec import parse_spec
from heatjob.worker import open_job_dataset

SCALE = 3  # pixels per heatmap pixel in the figure


def diverging(heatmap: np.ndarray) -> np.ndarray:
    """White at zero, red for positive, blue for negative relevance."""
    limit = float(np.abs(heatmap).max()) or 1.0
    v = np.clip(heatmap / limit, -1, 1)[..., None]
    white = np.ones(3)
    red, blue = np.array([0.8, 0.0, 0.0]), np.array([0.0, 0.2, 0.8])
    rgb = np.where(v >= 0, white + v * (red - white), white - v * (blue - white))
    return (rgb * 255).astype(np.uint8)


def tile(pixels: np.ndarray, boxes: np.ndarray) -> Image.Image:
    size = pixels.shape[0] * SCALE
    image = Image.fromarray(pixels).resize((size, size), Image.NEAREST)
    draw = ImageDraw.Draw(image)
    for x0, y0, x1, y1 in boxes * SCALE:
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=(0, 160, 0), width=2)
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store")
    parser.add_argument("out")
    parser.add_argument("--rows", type=int, nargs="+", default=[0, 5, 9, 14])
    args = parser.parse_args()

    root = zarr.open_group(args.store, mode="r")
    attrs = root.attrs["heatjob"]
    spec = parse_spec(attrs["spec"])
    dataset = open_job_dataset(spec)
    size = spec.dataset.image_size
    composites = list(spec.attribution.composites)
    rows_sample, rows_target = root["rows/sample"][:], root["rows/target"][:]
    box_sample, box_class = root["boxes/sample"][:], root["boxes/class"][:]
    xyxy = root["boxes/xyxy"][:]

    cell, label = size * SCALE, 14
    figure = Image.new(
        "RGB", (cell * (1 + len(composites)), label + cell * len(args.rows)), "white"
    )
    draw = ImageDraw.Draw(figure)
    for column, name in enumerate(["image", *composites]):
        draw.text((column * cell + 2, 1), name, fill=(0, 0, 0))
    for line, row in enumerate(args.rows):
        sample, target = int(rows_sample[row]), int(rows_target[row])
        boxes = xyxy[(box_sample == sample) & (box_class == target)]
        image = np.asarray(dataset.load_image(sample).resize((size, size)))
        top = label + line * cell
        figure.paste(tile(image, boxes), (0, top))
        draw.text((2, top + 2), attrs["classes"][target], fill=(255, 255, 255))
        for column, name in enumerate(composites, start=1):
            heatmap = root[f"heatmaps/{name}"][row].astype(np.float32)
            figure.paste(tile(diverging(heatmap), boxes), (column * cell, top))
    figure.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
