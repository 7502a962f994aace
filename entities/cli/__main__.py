"""``python -m entities.cli``: the same as the ``entities`` command."""

from entities.cli import main

main(prog_name="entities")
