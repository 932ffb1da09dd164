"""Stage 1, PAINT patching: `config` (the options), `loop` (the worker), `alpha` (evaluate
and choose alpha), `driver` (the command).

Empty on purpose: a trial process imports only the modules it needs (torch, not open_clip).
"""
