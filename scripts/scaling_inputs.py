"""Measure two inputs of docs/scaling.md that --dry-run does not print.

- S3 requests per unit: heatjob's own store code against moto's S3 server on
  loopback, counting the server's request log: a worker's write of one unit
  (write_unit_heatmaps) and the driver's bookkeeping after it (finish_unit).
- JPEG cost: read + resize to 224 + normalise of an ImageNet-sized (500x375) JPEG
  on one thread, as a worker's loader thread does it.

    python scripts/scaling_inputs.py [--composites 4] [--classes 1000]
"""

from __future__ import annotations

import argparse
import io
import logging
import socket
import time

import boto3
import numpy as np
import torch
from moto.server import ThreadedMotoServer
from PIL import Image

from heatjob.data.transforms import to_input
from heatjob.job.prepare import job_from_arrays
from heatjob.spec import parse_spec
from heatjob.store.layout import create_store
from heatjob.store.units import finish_unit, write_unit_heatmaps


class RequestCounter(logging.Handler):
    """Counts the HTTP requests moto's server logs."""

    count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "HTTP/1.1" in record.getMessage():
            self.count += 1


def jpeg_ms(repeats: int = 100) -> float:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    # a smooth image compresses like a photograph, not like noise
    y, x = np.mgrid[0:375, 0:500]
    pixels = np.stack([(x + y) % 256, (x * 2) % 256, (y * 3) % 256], axis=-1)
    pixels = (pixels + rng.integers(0, 32, pixels.shape)).clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    start = time.perf_counter()
    for _ in range(repeats):
        to_input(Image.open(io.BytesIO(data)), 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    return (time.perf_counter() - start) * 1000 / repeats


def s3_requests(n_composites: int, n_classes: int, size: int = 224) -> dict[str, int]:
    counter = RequestCounter()
    logging.getLogger("werkzeug").addHandler(counter)
    logging.getLogger("werkzeug").setLevel(logging.INFO)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    credentials = {"aws_access_key_id": "k", "aws_secret_access_key": "s"}
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **credentials).create_bucket(
        Bucket="scaling"
    )
    options = {"key": "k", "secret": "s", "client_kwargs": {"endpoint_url": endpoint}}
    try:
        n = 256
        labels = np.zeros((n, n_classes), dtype=bool)
        labels[np.arange(n), np.arange(n) % n_classes] = True
        composites = [f"c{i}" for i in range(n_composites)]
        url = "s3://scaling/job.zarr"
        spec = parse_spec(
            {
                "dataset": {"kind": "synthetic", "image_size": size},
                "model": {"arch": "small_cnn"},
                "attribution": {"composites": composites},
                "store": {"path": url, "dtype": "float16", "storage_options": options},
                "run": {"shard_size": 64},
            }
        )
        job = job_from_arrays(spec, labels)
        plan = job.plan
        counter.count = 0
        root = create_store(job, attrs={"format": 1, "spec": {}})
        created = counter.count
        unit = plan.units[1]
        maps = {c: np.zeros((unit.n_rows, size, size), np.float32) for c in composites}
        counter.count = 0
        write_unit_heatmaps(url, unit, maps, options)
        worker = counter.count
        owned = range(unit.sample_start, unit.sample_stop)
        counter.count = 0
        logits = np.zeros((len(owned), n_classes), np.float32)
        finish_unit(root, unit, owned, logits, None, ("host", "node", 1))
        driver = counter.count
    finally:
        server.stop()
    return {"create_store": created, "worker_per_unit": worker, "driver_per_unit": driver}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--composites", type=int, default=4)
    parser.add_argument("--classes", type=int, default=1000)
    args = parser.parse_args()
    print(f"JPEG 500x375 read + preprocess to 224: {jpeg_ms():.1f} ms/image, one thread")
    counts = s3_requests(args.composites, args.classes)
    print(
        f"S3 requests ({args.composites} composites, {args.classes} classes): "
        f"create_store {counts['create_store']}, per unit: worker {counts['worker_per_unit']}, "
        f"driver {counts['driver_per_unit']}"
    )


if __name__ == "__main__":
    main()
