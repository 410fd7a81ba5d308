#!/usr/bin/env bash
# GPU check: the demo job and a vgg16 job of N (default 512) synthetic 224x224
# images on the GPU(s) of the machine it runs on, each after a --dry-run;
# records images/s, rows/s and peak GPU memory into $OUT/gpu_check.json (and
# the raw logs beside it); then the engine benchmark on CUDA (engine-*.json in $OUT).
#
#   OUT=out/gpu-check scripts/gpu_check.sh        # from the repo root, venv active or PY set
set -euo pipefail

PY=${PY:-python}
OUT=${OUT:-out/gpu-check}
N=${N:-512}              # synthetic images in the vgg16 job
mkdir -p "$OUT"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
$PY -c "import torch; assert torch.cuda.is_available(), 'torch sees no GPU'; print(torch.__version__, torch.version.cuda)"

# Peak GPU memory: nvidia-smi sampled every 200 ms while a job runs (covers the Ray workers,
# which torch.cuda.max_memory_allocated in this shell cannot see).
sample_memory() {  # $1: output file
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$1" &
    echo $!
}

cat > "$OUT/vgg16.toml" <<EOF
[dataset]
kind = "synthetic"
num_samples = $N
image_size = 224

[model]
arch = "vgg16"
num_classes = 6

[attribution]
composites = ["EpsilonPlusFlat", "cmp-a2b1-flat"]
targets = "labels"

[store]
path = "$OUT/vgg16.zarr"
dtype = "float16"

[run]
batch_size = 32
shard_size = 64
device = "cuda"
EOF

run_job() {  # $1: name, $2: spec
    local name=$1 spec=$2
    $PY -m heatjob.cli submit "$spec" --dry-run -q | tee "$OUT/$name.dry-run.txt"
    local sampler
    sampler=$(sample_memory "$OUT/$name.memory.txt")
    local start end
    start=$(date +%s.%N)
    $PY -m heatjob.cli submit "$spec" --store "$OUT/$name.zarr" --overwrite -q | tee "$OUT/$name.submit.txt"
    end=$(date +%s.%N)
    kill "$sampler"
    echo "$start $end" > "$OUT/$name.wall.txt"
}

run_job demo jobs/demo.toml
run_job vgg16 "$OUT/vgg16.toml"
$PY -m heatjob.cli merge "$OUT/demo.zarr" -q | tee "$OUT/demo.merge.txt"

$PY - "$OUT" <<'EOF'
import json, pathlib, re, sys
import zarr

out = pathlib.Path(sys.argv[1])
report = {"gpu": (out / "gpu.txt").read_text().strip()}
for name in ("demo", "vgg16"):
    store = zarr.open_group(str(out / f"{name}.zarr"), mode="r")
    start, end = map(float, (out / f"{name}.wall.txt").read_text().split())
    line = (out / f"{name}.submit.txt").read_text()
    seconds = float(re.search(r"in ([\d.]+) s", line).group(1))  # Ray start-up included
    rows = store["rows/sample"].shape[0]
    images = store["samples/id"].shape[0]
    composites = len(store.attrs["heatjob"]["spec"]["attribution"]["composites"])
    memory = [int(v) for v in (out / f"{name}.memory.txt").read_text().split() if v.isdigit()]
    report[name] = {
        "images": images,
        "rows": rows,
        "composites": composites,
        "submit_seconds": seconds,
        "wall_seconds": end - start,
        "images_per_second": images / seconds,
        "rows_per_second": rows / seconds,
        "heatmaps_per_second": rows * composites / seconds,
        "peak_gpu_memory_mib": max(memory, default=None),
        "dry_run": (out / f"{name}.dry-run.txt").read_text(),
    }
(out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
print(json.dumps({k: v for k, v in report.items()}, indent=2))
EOF

# The LRP engine on the GPU: vgg16 and resnet50, batch 32, 224 px, against zennit and the
# plain forward+backward, then bfloat16 and float16 against float32 (bench/run.py); its JSON
# goes beside the job figures, and bench/table.py prints the tables of docs/benchmarks.md.
$PY bench/run.py --device cuda --batch 32 --targets-batch 8 --precisions bfloat16,float16 \
    --archs vgg16,resnet50 --out "$OUT"
$PY bench/table.py "$OUT"
