"""Capture from a teacher: run a real base model and its teacher over a text corpus and turn what
the target modules see into the statistics the exact solver fits adapters from.

Everything under this package needs the `capture` extra (torch, transformers, gguf, accelerate,
peft) and is imported only when a catalogue entry declares `capture:`; the core (training,
merging, slot, reader) never imports it. `corpus` and `tokens` are the exception: they are plain
Python, so bad corpora fail before any model is loaded.
"""
