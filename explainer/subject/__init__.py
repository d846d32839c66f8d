"""Plumbing: subject models, the language models whose neurons are explained.

`models` resolves a model name, loads it through TransformerLens and reads MLP post-activations.
It is plumbing, not part of `record`, because more than one stage runs the subject: `record`
reads the corpus through it, and `judge` (generation, steering) feeds it new text and steers it.
"""
