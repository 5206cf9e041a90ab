"""Task code: what a run of one task does (pretraining, SQuAD, GLUE), above `utils/` and below the `run_*.py`
entry points. `flags` defines the shared command-line flags; `config` turns parsed flags into typed,
validated sections; `engine` is the one training-step loop every task uses. The pretraining loop's parts
(`metric_window`, `resume_agreement`) and the tasks' scoring (`squad_postprocess`, `squad_metrics`,
`glue_metrics`: pure numpy, also used by `inference/`) live here beside the tasks that use them."""
