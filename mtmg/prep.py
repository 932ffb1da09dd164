"""`python -m mtmg.prep`: the command-line face of `mtmg.data.prep`."""

from mtmg.data.prep import ShardConfig, main, shard

__all__ = ["ShardConfig", "main", "shard"]

if __name__ == "__main__":
    raise SystemExit(main())
