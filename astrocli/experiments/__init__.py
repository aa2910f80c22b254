"""Many runs at once: cross-validation (:mod:`.cv`), tuning (:mod:`.tune`), comparing runs
(:mod:`.compare`), reading finished runs for scaling curves (:mod:`.runs`), and looking behind the
numbers: data audits (:mod:`.audit`, ``astro audit``) and run reports (:mod:`.report`, ``astro report``).
"""
