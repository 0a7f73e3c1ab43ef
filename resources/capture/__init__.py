"""Capture from a teacher: run a real base model and its teacher over a text corpus and turn what
the target modules see into the statistics the exact solver fits adapters from.

Everything under this package needs the `capture` extra (torch, transformers, gguf, accelerate,
peft) and is imported only when a catalogue entry declares `capture:`; the core (training,
merging, slot, reader) never imports it. `corpus` and `windows` are the exception: they are plain
Python, so bad corpora fail before any model is loaded.

    corpus         reading the corpus (no torch)
    windows        texts to token windows: one per text (`first_windows`) or packed (`cut_windows`)
    models         loading the base model and a teacher, safely
    layerwise      running a decoder half-layer by half-layer
    fit            teacher-forced statistics and the sequential layer-by-layer fit
    attention_mix  v_proj fitted through the student's attention (one Gram per key/value group)
    refine         KL descent through PEFT from the closed-form fit, best epoch kept
    judge          KL to the teacher, top-1 and perplexity on held-out windows, through PEFT
    files          the captured dataset's files
"""
