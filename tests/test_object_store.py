"""A store on S3-compatible object storage: moto's S3 server on loopback, started here.

Submit, resume, merge, status and open_store all go through s3:// URLs. The
truth is the same job written to a local folder: the S3 store must hold the same
arrays and merge to the same metrics. Credentials reach heatjob two ways, both
tested: the spec's `[store] storage_options` (submit, its Ray workers; the
environment then has no AWS variables at all), and the environment (the CLI's
merge and status, which have no spec).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import boto3
import numpy as np
import pytest
import ray
import torch
import zarr
from jobrun import done_count, kill_the_driver_mid_job
from jobrun import heatjob as run_cli
from moto.server import ThreadedMotoServer
from ray_cluster import free_port

import heatjob
from heatjob.errors import HeatjobError
from heatjob.eval.merge import merge
from heatjob.job.submit import submit
from heatjob.models import SmallCNN
from heatjob.spec import parse_spec, with_overrides
from heatjob.store.layout import open_store

pytestmark = pytest.mark.slow

KEY, SECRET = "heatjob-test-key", "heatjob-test-secret-d41d8cd98f00b204"
BUCKET = "heatjob-bucket"
HEATJOB = [sys.executable, "-m", "heatjob.cli"]


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server and a bucket; no AWS variables in this process while Ray starts."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("AWS_")}
    # nor credentials from files or an instance role: only what each test hands over
    os.environ.update(
        AWS_SHARED_CREDENTIALS_FILE="/nonexistent/credentials",
        AWS_CONFIG_FILE="/nonexistent/config",
        AWS_EC2_METADATA_DISABLED="true",
    )
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=BUCKET)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=100 * 1024**2,
        logging_level="ERROR",
    )
    try:
        yield {"endpoint": endpoint, "client": client}
    finally:
        ray.shutdown()
        server.stop()
        for key in [k for k in os.environ if k.startswith("AWS_")]:
            del os.environ[key]
        os.environ.update(saved)


def options(s3) -> dict:
    return {"key": KEY, "secret": SECRET, "client_kwargs": {"endpoint_url": s3["endpoint"]}}


def env_with_credentials(s3) -> dict:
    return {
        **os.environ,
        "RAY_ADDRESS": "",
        "AWS_ACCESS_KEY_ID": KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_ENDPOINT_URL": s3["endpoint"],
        "AWS_DEFAULT_REGION": "us-east-1",
    }


@pytest.fixture(scope="module")
def jobs(s3, tmp_path_factory):
    """The same job into S3 (options in the spec) and into a local folder."""
    base = tmp_path_factory.mktemp("s3job")
    torch.manual_seed(0)
    checkpoint = base / "model.pt"
    torch.save(SmallCNN(num_classes=6).state_dict(), checkpoint)
    raw = {
        "dataset": {"kind": "synthetic", "num_samples": 10, "image_size": 32},
        "model": {"arch": "small_cnn", "checkpoint": str(checkpoint), "num_classes": 6},
        "attribution": {"composites": ["EpsilonPlusFlat", "cmp-a2b1-flat"]},
        "store": {"path": f"s3://{BUCKET}/jobs/demo.zarr", "storage_options": options(s3)},
        "run": {"batch_size": 8, "shard_size": 4, "workers": 2},
    }
    remote = parse_spec(raw, source="s3.toml")
    local = with_overrides(remote, store={"path": str(base / "local.zarr"), "storage_options": {}})
    return {
        "remote": remote,
        "local": local,
        "remote_summary": submit(remote, progress=False),
        "local_summary": submit(local, progress=False),
    }


def test_submit_writes_the_store_into_the_bucket(s3, jobs):
    remote, local = jobs["remote"], jobs["local"]
    assert jobs["remote_summary"].units_run == jobs["remote_summary"].units_total > 2
    keys = [o["Key"] for o in s3["client"].list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert "jobs/demo.zarr/zarr.json" in keys
    assert any(k.startswith("jobs/demo.zarr/heatmaps/EpsilonPlusFlat/c/") for k in keys)

    root, info = open_store(remote.store.path, storage_options=options(s3))
    here = zarr.open_group(local.store.path, mode="r")
    assert root["units/done"][:].all()
    for name in ("heatmaps/EpsilonPlusFlat", "heatmaps/cmp-a2b1-flat", "samples/logits"):
        np.testing.assert_array_equal(root[name][:], here[name][:])
    assert root["rows/sample"][:].tolist() == here["rows/sample"][:].tolist()

    # credentials never go into the store: redacted in the provenance, absent from every object
    stored = info.attrs["spec"]["store"]["storage_options"]
    assert stored["secret"] == stored["key"] == "<redacted>"
    assert stored["client_kwargs"]["endpoint_url"] == s3["endpoint"]
    for key in keys:
        if key.endswith("zarr.json"):
            body = s3["client"].get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()
            assert SECRET not in body and KEY not in body


def test_resume_through_s3_redoes_only_missing_units(s3, jobs):
    remote = jobs["remote"]
    store = zarr.open_group(remote.store.path, mode="r+", storage_options=options(s3))
    before = store["heatmaps/cmp-a2b1-flat"][:]
    store["units/done"][1] = False
    store["heatmaps/cmp-a2b1-flat"][4:8] = np.zeros((4, 32, 32))
    summary = submit(remote, progress=False)
    assert summary.units_run == 1
    assert store["units/done"][:].all()
    np.testing.assert_array_equal(store["heatmaps/cmp-a2b1-flat"][:], before)


def test_merge_and_status_through_s3_with_credentials_from_the_environment(s3, jobs, tmp_path):
    url = jobs["remote"].store.path
    env = env_with_credentials(s3)
    out = subprocess.run(
        [*HEATJOB, "merge", url, "--json", str(tmp_path / "m.json"), "-q"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    expected = merge(jobs["local"].store.path, progress=False)
    assert json.loads((tmp_path / "m.json").read_text()) == json.loads(json.dumps(expected.metrics))
    root, _ = open_store(url, storage_options=options(s3))
    assert root.attrs["metrics"] == json.loads(json.dumps(expected.metrics))

    # the analysis view reads the same per-row metrics through the URL
    remote_ds = heatjob.open_store(url, storage_options=options(s3))
    local_ds = heatjob.open_store(jobs["local"].store.path)
    np.testing.assert_array_equal(
        remote_ds["relevance_mass"].values, local_ds["relevance_mass"].values
    )
    np.testing.assert_array_equal(remote_ds["heatmap"].values, local_ds["heatmap"].values)

    status = subprocess.run(
        [*HEATJOB, "status", url, "--json"], env=env, capture_output=True, text=True, timeout=300
    )
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["units_done"] == report["units_total"] and report["merged"] is True


def test_overwrite_on_a_url_deletes_only_a_heatjob_store(s3, jobs):
    client = s3["client"]
    client.put_object(Bucket=BUCKET, Key="other/data.txt", Body=b"not heatjob's")
    client.put_object(Bucket=BUCKET, Key="other/zarr.json", Body=b"{}")
    foreign = with_overrides(jobs["remote"], store={"path": f"s3://{BUCKET}/other"})
    with pytest.raises(HeatjobError, match="not a heatjob store; not touching it"):
        submit(foreign, overwrite=True, progress=False)
    assert client.get_object(Bucket=BUCKET, Key="other/data.txt")["Body"].read() == (
        b"not heatjob's"
    )

    again = submit(jobs["remote"], overwrite=True, progress=False)
    assert again.units_run == again.units_total


def test_missing_bucket_and_missing_credentials_are_one_line_errors(s3, jobs):
    missing = with_overrides(jobs["remote"], store={"path": "s3://no-such-bucket/x.zarr"})
    with pytest.raises(HeatjobError, match="bucket 'no-such-bucket' does not exist"):
        submit(missing, progress=False)
    no_secret = with_overrides(
        jobs["remote"],
        store={"storage_options": {"client_kwargs": {"endpoint_url": s3["endpoint"]}}},
    )
    with pytest.raises(HeatjobError, match="demo.zarr: cannot reach it: Unable to locate cred"):
        submit(no_secret, progress=False)


def test_driver_killed_while_writing_to_s3_then_resumed_equals_an_uninterrupted_run(
    s3, jobs, tmp_path
):
    """The CLI's driver and every process it started, SIGKILLed while units are done in the
    bucket and one is held mid-way; the rerun does only the units without a done record
    and the bucket's store equals the uninterrupted run of the same job, bit for bit."""
    from heatjob.spec import to_toml
    from heatjob.store.records import done_units

    url = f"s3://{BUCKET}/jobs/killed.zarr"
    spec = with_overrides(jobs["remote"], store={"path": url}, run={"workers": 1})
    spec_file = tmp_path / "killed.toml"
    spec_file.write_text(to_toml(spec.to_dict()))
    reference = with_overrides(spec, store={"path": f"s3://{BUCKET}/jobs/uninterrupted.zarr"})
    (tmp_path / "ref.toml").write_text(to_toml(reference.to_dict()))
    ran = run_cli("submit", str(tmp_path / "ref.toml"), "-q")
    assert ran.returncode == 0, ran.stderr

    kill_the_driver_mid_job(spec_file, tmp_path, 2, lambda: done_count(url, options(s3)), 2)
    store = zarr.open_group(url, mode="r", storage_options=options(s3))
    done_before = done_units(store)
    assert 2 <= done_before.sum() < len(done_before) and not done_before[2]

    ran = run_cli("submit", str(spec_file), "-q")
    assert ran.returncode == 0, ran.stderr
    assert f": {int((~done_before).sum())} of {len(done_before)} units written" in ran.stdout
    want = zarr.open_group(reference.store.path, mode="r", storage_options=options(s3))
    store = zarr.open_group(url, mode="r", storage_options=options(s3))
    names = ["samples/logits", "rows/target", "units/done", "units/checksum"] + [
        f"heatmaps/{c}" for c in spec.attribution.composites
    ]
    for name in names:
        assert store[name][:].tobytes() == want[name][:].tobytes(), name
    assert store["units/done"][:].all()
