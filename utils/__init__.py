"""Foundations every layer may use: logging, the CLI and its exit statuses, files (atomic outputs, locks),
the runtime (device, ranks, threads, ISA choices), type checks, checkpoint I/O, reports, and the non-finite
policy's host side (the checkpoint save raises its error).

Does not hold loop parts or task code: those live in `tasks/` (e.g. `tasks.metric_window`,
`tasks.resume_agreement`, the SQuAD / GLUE scoring), program-layer parts beside `program.py`
(`gloo_data_parallel`, `program_rewrites`). Nothing here imports `tasks`, `data` or the program layer
(`tests/test_architecture.py`)."""
