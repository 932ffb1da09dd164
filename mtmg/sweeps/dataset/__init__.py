"""The dataset sweep: `config` (its options and help, light), `driver`; `trial`: what its trial
processes run.

Empty on purpose: a trial process imports only the modules it needs.
"""
