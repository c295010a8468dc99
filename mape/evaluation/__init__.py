"""Layer 4, evaluation: the baselines, comparisons against retraining and their executors (local, Ray), the
per-example audit, the quality gate and the attributions. Imports the layers below."""
