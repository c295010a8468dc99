"""Layer 3, one unlearning run (DESIGN.md §3–§8): the prepared workspace of a preset, the request's samples and
forget target, the run itself and its follow-up step loop. Imports the layers below."""
