"""Evaluation of a trained Mask-LLaVA from the cache, in LLaVA-1.5's own formats: answer a
benchmark's question file at any token budget (answer.py), score the answers (pope.py),
and compare budgets (sweep.py). ``masktok answer`` and ``masktok score`` are in cli.py."""
