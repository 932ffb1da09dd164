"""A small zero-shot CLIP for the demo and tests (`driver`).

Empty on purpose: a trial process imports only the modules it needs (torch, not open_clip).
"""
