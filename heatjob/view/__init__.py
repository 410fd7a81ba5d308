"""Looking at a store: heatmap PNGs and figures, xarray access."""
