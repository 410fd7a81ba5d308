"""heatjob: LRP heatmaps for whole image data sets, stored in Zarr, scored for localisation."""

__version__ = "0.1.0"
