"""Persistence: the Record schema and the Zarr store. Knows nothing about models or views."""
