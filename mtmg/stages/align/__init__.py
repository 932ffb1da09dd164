"""Stage 2, cross-modal alignment: `config` (the options), `loss`, `loop` (the worker),
`scoring` (its evaluation), `driver` (the command).

Empty on purpose: a trial process imports only the modules it needs (torch, not open_clip).
"""
