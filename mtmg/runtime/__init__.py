"""Everything that talks to Ray: connecting (`cluster`), Ray Train jobs (`train`), Ray Tune
(`tuner`) and the alpha sweep's hand-off actor (`handoff`).

Empty on purpose: a trial process imports only the modules it needs (torch, not open_clip).
"""
