"""Task code: what a run of one task does (pretraining, SQuAD), above `utils/` and below the `run_*.py`
entry points. `flags` defines the shared command-line flags; `config` turns parsed flags into typed,
validated sections; `engine` is the one training-step loop every task uses."""
