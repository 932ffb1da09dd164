"""`python -m mtmg.pretrain`: the command-line face of `mtmg.stages.pretrain.driver`."""

from mtmg.stages.pretrain.driver import PretrainConfig, main, pretrain

__all__ = ["PretrainConfig", "main", "pretrain"]

if __name__ == "__main__":
    raise SystemExit(main())
