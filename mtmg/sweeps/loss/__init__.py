"""The alignment-loss sweep: `config` (its options and help, light: parsed before torch and Ray
are imported), `driver` (its checks, trials and outputs).

Empty on purpose: `--help` imports only `config`.
"""
