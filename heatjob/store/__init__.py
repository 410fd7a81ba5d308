"""The Zarr store: its schema, creating and opening it, unit records, verification."""
