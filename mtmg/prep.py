"""`python data_prep/shard.py` from Python: `shard(ShardConfig(...))` and the command line."""

from mtmg.data.prep import ShardConfig
from mtmg.runtime.shard_job import main, shard

__all__ = ["ShardConfig", "main", "shard"]

if __name__ == "__main__":
    raise SystemExit(main())
