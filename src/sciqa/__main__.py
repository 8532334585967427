"""``python -m sciqa`` = the ``sciqa`` command."""
from sciqa.cli import main

main()
