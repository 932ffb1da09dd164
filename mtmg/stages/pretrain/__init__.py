"""A small zero-shot CLIP for the demo and tests: `config` (the options), `render` (the
pictures), `contrastive` (training and zero-shot evaluation), `driver` (the command).

Empty on purpose: a trial process imports only the modules it needs (torch, not open_clip).
"""
