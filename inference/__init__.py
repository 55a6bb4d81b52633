"""One home for inference: a trained checkpoint answering about images.

    generation  a checkpoint loaded for generation, prompt ids, and generate_answers: the one
                batched generation path that generate, answer (evaluate/answer.py) and ask call
    cache       the cache as generation reads it (widths checked, an image id's status)
    generate    ``masktok generate``: one cached image
    ask         ``masktok ask``: pictures no job planned, through the stage chain of a job
                (stages/chain.py), no Ray

It reads the trainer's model and composition (trainer/) and the stages (stages/); it never
imports pipeline/, so evaluate/ can build on it.
"""
