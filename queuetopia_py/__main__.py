"""`python -m queuetopia_py`: the `queuetopia` command line."""

from queuetopia_py._cli import main

if __name__ == "__main__":
    main()
