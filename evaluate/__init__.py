"""Evaluation of a trained Mask-LLaVA from the cache, in LLaVA-1.5's own formats: answer a
benchmark's question file at any token budget (answer.py, through inference/), score the
answers (one module per benchmark) and compare budgets (sweep.py). The commands are in
cli/answer.py and cli/score.py; evaluate/ never imports pipeline/."""
