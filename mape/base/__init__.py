"""Layer 0, what every layer uses: the one error type (:mod:`.errors`), the model cache on disk (:mod:`.cache`),
the measures on predicted probabilities (:mod:`.metrics`) and strict-JSON conversion (:mod:`.jsonsafe`).
Imports nothing else of ``mape``."""
