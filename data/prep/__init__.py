"""Data preparation, corpus -> text -> shards: download, Wikipedia/plain-text extraction, vocab training,
Dask preprocessing into LDDL-format Parquet shards, balancing, and the shard inspector.

Each tool is a CLI (`python -m data.prep.<tool>`, several also installed as console scripts with LDDL's
names). They share the on-disk contract with the loader through `data.lddl_format` and `data.masking`;
training code never imports this package.
"""
