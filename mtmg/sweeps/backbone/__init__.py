"""The backbone sweep: `config` (its options and help, light), `driver`.

Empty on purpose: a trial process imports only the modules it needs (torch, not open_clip).
"""
