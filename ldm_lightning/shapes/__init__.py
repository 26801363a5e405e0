"""The embedded tiny-shapes model: its drawn data, pixel judge, training recipes and evaluation.

Nothing in the core imports this package; the core only loads the trained model from `assets/`.
"""
