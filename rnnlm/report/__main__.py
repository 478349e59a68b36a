"""`python -m rnnlm.report`."""
from rnnlm.errors import run_cli
from rnnlm.report.cli import PROG, main

run_cli(main, PROG)
