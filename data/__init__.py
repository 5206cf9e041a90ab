"""Data tools: corpus extraction, Dask preprocessing into LDDL-format Parquet shards, balancing, loaders.

Training code imports only the loaders (`data.lddl_loader`) and `data.masking`; the preprocessing CLIs
(`python -m data.<tool>`) are never imported by training.
"""
