"""Layer 2, data: data sets (embedded and local folders), forget-set specs, poisoned-data scenarios and the
presets that pair a model with a data set. Imports :mod:`mape.base` and :mod:`mape.method`."""
