"""`python -m mtmg.verify`: the command-line face of `mtmg.data.verify`."""

from mtmg.data.verify import main, verify

__all__ = ["main", "verify"]

if __name__ == "__main__":
    raise SystemExit(main())
