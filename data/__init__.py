"""Data, split by stage; the imports between the parts point one way, so training never loads the prep tools.

  data.lddl_format, data.masking   the shard contract shared by writer and reader: schema, file names, bins,
                                   row counts, and the masking rule (static masking at prep time and dynamic
                                   masking at load time must agree).
  data.prep                        corpus -> text -> shards: the preparation CLIs (`python -m data.prep.<tool>`).
  data.loader                      the training-time loader; imports the contract, never `data.prep`.
  data.features                    fine-tuning task features (SQuAD).

`data.prep.inspect_shards` reads shards through `data.loader` on purpose (it reports what training will see);
that is the one import between the stages. tests/test_layout.py checks the rules.
"""
