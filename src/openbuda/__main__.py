"""``python -m openbuda …``: the ``openbuda`` command, for where its script is not on PATH."""

from openbuda.cli.main import main

if __name__ == "__main__":
    main()
