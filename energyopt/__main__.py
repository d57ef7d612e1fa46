"""`python -m energyopt ...`: the `energyopt` command, without the console script on PATH."""

from energyopt.cli import app

app(prog_name="energyopt")
