"""Stage 2, cross-modal alignment (`driver`).

Empty on purpose: a trial process imports only the modules it needs (torch, not open_clip).
"""
