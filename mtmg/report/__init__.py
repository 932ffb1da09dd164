"""Results: tables and plots (`tables`) and the paper-style report (`build`).

Empty on purpose: a trial process imports only the modules it needs (torch, not open_clip).
"""
