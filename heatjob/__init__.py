"""heatjob: LRP heatmaps for whole image data sets, stored in Zarr, scored for localisation."""

__version__ = "0.2.0"
__all__ = ["open_store"]


def __getattr__(name: str):
    # open_store pulls in xarray and dask: imported on first use, not with every worker
    if name == "open_store":
        from heatjob.view.analysis import open_store

        return open_store
    raise AttributeError(f"module 'heatjob' has no attribute {name!r}")
