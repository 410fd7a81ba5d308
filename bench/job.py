"""The whole job against the loop a researcher writes, on the same data, model and composites.

- job: `heatjob submit` of jobs/demo.toml (synthetic shapes, the shipped small CNN, one heatmap
  per label) limited to `--limit` images, in a subprocess: Ray's start-up, data loading, the LRP
  engine and the Zarr writes all count.
- plain: the same rows with a torch DataLoader, zennit 0.5.1 (the composite's zennit class, hooks
  registered once per composite) and one .npy file per heatmap, also in a subprocess.

Both run in one invocation, one after the other. It also reports the bytes per heatmap pixel of
the store (float16, Zstd) and of the .npy files, and checks that both give the same heatmaps.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from datetime import datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
COMPOSITES = "EpsilonPlusFlat,EpsilonAlpha2Beta1Flat,EpsilonGammaBox"


def write_spec(base: Path, limit: int, composites: list[str], store: Path, dest: Path) -> dict:
    from heatjob.spec import to_toml

    spec = tomllib.loads(base.read_text())
    spec["dataset"]["limit"] = limit
    spec["attribution"]["composites"] = composites
    spec["store"]["path"] = str(store)
    dest.write_text(to_toml(spec))
    return spec


def plain_loop(spec_path: Path, out: Path) -> int:
    """What a researcher writes: DataLoader, zennit, np.save per heatmap. Returns the rows."""
    import torch
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms
    from zennit import composites as zcomposites
    from zennit.attribution import Gradient
    from zennit.torchvision import VGGCanonizer

    from heatjob.data.synthetic import SyntheticDataset
    from heatjob.models import SmallCNN

    spec = tomllib.loads(spec_path.read_text())
    data, model_spec = spec["dataset"], spec["model"]
    size = data["image_size"]
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    shapes = SyntheticDataset(data["num_samples"], data["seed"], size, data["limit"])
    preprocess = transforms.Compose(
        [transforms.Resize((size, size)), transforms.ToTensor(), transforms.Normalize(mean, std)]
    )

    class Shapes(Dataset):
        def __len__(self) -> int:
            return len(shapes)

        def __getitem__(self, i: int):
            return preprocess(shapes.load_image(i)), i

    model = SmallCNN(num_classes=model_spec["num_classes"])
    model.load_state_dict(torch.load(ROOT / model_spec["checkpoint"], map_location="cpu"))
    model.eval()
    low = ((0 - torch.tensor(mean)) / torch.tensor(std)).view(1, 3, 1, 1)
    high = ((1 - torch.tensor(mean)) / torch.tensor(std)).view(1, 3, 1, 1)
    loader = DataLoader(Shapes(), batch_size=spec["run"]["batch_size"])
    rows = 0
    for name in spec["attribution"]["composites"]:
        kwargs = {"canonizers": [VGGCanonizer()]}
        composite = (
            zcomposites.EpsilonGammaBox(low, high, **kwargs)
            if name == "EpsilonGammaBox"
            else getattr(zcomposites, name)(**kwargs)
        )
        (out / name).mkdir(parents=True)
        with Gradient(model, composite) as attributor:
            for x, index in loader:
                pairs = [
                    (j, c) for j, i in enumerate(index.tolist()) for c in shapes.record(i).labels
                ]
                images = torch.tensor([j for j, _ in pairs])
                classes = torch.tensor([c for _, c in pairs])
                seed = torch.nn.functional.one_hot(classes, model_spec["num_classes"]).float()
                _, relevance = attributor(x[images], lambda output, s=seed: s * output)
                heatmaps = relevance.sum(1).numpy()
                for (j, c), heatmap in zip(pairs, heatmaps, strict=True):
                    np.save(out / name / f"{int(index[j]):06d}_{c}.npy", heatmap)
                rows += len(pairs)
    return rows


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def compare(store: Path, plain: Path, composites: list[str]) -> dict[str, float]:
    """max |store - npy| / max |npy| per composite (the store holds float16)."""
    import zarr

    root = zarr.open_group(str(store), mode="r")
    samples, targets = root["rows/sample"][:], root["rows/target"][:]
    out = {}
    for name in composites:
        stored = root[f"heatmaps/{name}"][:].astype(np.float32)
        files = [plain / name / f"{s:06d}_{t}.npy" for s, t in zip(samples, targets, strict=True)]
        reference = np.stack([np.load(f) for f in files])
        out[name] = float(np.abs(stored - reference).max() / np.abs(reference).max())
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--spec", type=Path, default=ROOT / "jobs" / "demo.toml")
    parser.add_argument("--limit", type=int, default=500)
    parser.add_argument("--composites", default=COMPOSITES)
    parser.add_argument("--quick", action="store_true", help="--limit 48, one composite")
    parser.add_argument("--plain-only", type=Path, help=argparse.SUPPRESS)  # the subprocess
    args = parser.parse_args(argv)
    if args.plain_only:
        print(plain_loop(args.spec, args.plain_only))
        return {}
    if args.quick:
        args.limit, args.composites = 48, "EpsilonPlusFlat"
    composites = args.composites.split(",")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="heatjob-bench-") as tmp:
        tmp_path = Path(tmp)
        store, plain_dir, spec_path = tmp_path / "job.zarr", tmp_path / "plain", tmp_path / "s.toml"
        spec = write_spec(args.spec, args.limit, composites, store, spec_path)
        submit = [sys.executable, "-c", "from heatjob.cli import app; app()", "submit"]
        start = time.perf_counter()
        subprocess.run([*submit, str(spec_path)], check=True, env=env, cwd=ROOT)
        job_s = time.perf_counter() - start
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, __file__, "--spec", str(spec_path), "--plain-only", str(plain_dir)],
            check=True,
            env=env,
            capture_output=True,
            text=True,
        )
        plain_s = time.perf_counter() - start
        rows = int(done.stdout.strip().splitlines()[-1])
        import zarr

        root = zarr.open_group(str(store), mode="r")
        n_rows, size = root[f"heatmaps/{composites[0]}"].shape[:2]
        pixels = n_rows * size * size * len(composites)
        heatmap_bytes = sum(disk_bytes(store / "heatmaps" / name) for name in composites)
        report = {
            "meta": {
                "date": datetime.now().isoformat(timespec="seconds"),
                "cpu_count": os.cpu_count(),
                "loadavg_1min_before": load_before,
                "loadavg_1min_after": os.getloadavg()[0],
                "spec": spec,
            },
            "images": args.limit,
            "heatmap_rows": n_rows,
            "composites": composites,
            "job_s": job_s,
            "plain_loop_s": plain_s,
            "plain_over_job": plain_s / job_s,
            "plain_rows": rows,
            "store_bytes_per_heatmap_pixel": heatmap_bytes / pixels,
            "store_total_bytes_per_heatmap_pixel": disk_bytes(store) / pixels,
            "npy_bytes_per_heatmap_pixel": disk_bytes(plain_dir) / pixels,
            "max_rel_diff_store_vs_plain": compare(store, plain_dir, composites),
        }
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    text = json.dumps(report, indent=2) + "\n"
    for name in (f"job-{stamp}.json", "job-latest.json"):
        (args.out / name).write_text(text)
    print(
        f"{args.limit} images, {n_rows} rows x {len(composites)} composites: heatjob submit "
        f"{job_s:.1f} s, plain loop {plain_s:.1f} s (plain/job {plain_s / job_s:.2f}); "
        f"bytes per heatmap pixel: store {report['store_bytes_per_heatmap_pixel']:.2f}, "
        f".npy {report['npy_bytes_per_heatmap_pixel']:.2f}"
    )
    return report


if __name__ == "__main__":
    main()
