"""`python -m stagewise_node.cli` is the `stagewise` command."""

from stagewise_node.cli import main

main()
