"""``python -m astrocli ...`` (used by ``torchrun -m astrocli train ...``)."""

from astrocli.cli import main

if __name__ == "__main__":
    main()
