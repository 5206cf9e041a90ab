"""The training-time pretraining loader: LDDL Parquet shards (and legacy HDF5 shards) -> feed dicts.

Entry point: `data.loader.lddl_loader.get_bert_pretrain_data_loader`. Reads the format defined in
`data.lddl_format` and masks with `data.masking`; imports nothing from `data.prep`, so training does not
depend on the preparation tools (Dask, blingfire, mwparserfromhell).
"""
