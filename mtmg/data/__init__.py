"""Raw datasets to model-ready batches: band and label registries, raw readers (`raw/`),
sharding (`prep`), the shard format (`shards`, `verify`), loading (`loader`, `transforms`).

Empty on purpose: a trial process imports only the modules it needs (torch, not open_clip).
"""
