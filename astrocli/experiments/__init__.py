"""Many runs at once: cross-validation (:mod:`.cv`), tuning (:mod:`.tune`), comparing runs
(:mod:`.compare`) and reading finished runs for scaling curves (:mod:`.runs`).
"""
