"""Neural forecasters, baselines, features and the model bundle: everything needed at inference.

Imports no other package of this project (see docs of the layout in README).
"""
