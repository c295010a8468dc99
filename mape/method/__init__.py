"""Layer 1, the method (DESIGN.md §2–§8): model adapters and the gates on heads and FFN filters, the task model
and its training, the unit scores, the mask search, the masked update rules and the distilled push. Imports only
:mod:`mape.base`."""
