"""Fine-tuning task features: task datasets -> model-ready feature arrays (`data.features.squad`).

Named `features`, not `tasks`, so it is not confused with the top-level `tasks` package (the runs).
"""
