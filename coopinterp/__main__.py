"""`python -m coopinterp ...` runs the CLI."""
from .cli import main

main()
