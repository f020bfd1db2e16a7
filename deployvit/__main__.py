"""`python -m deployvit` (and `torchrun -m deployvit`) run the CLI."""

from deployvit.cli import main

if __name__ == "__main__":
    main()
