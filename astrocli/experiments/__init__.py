"""Experiments on top of training runs: data audits (``astro audit``) and run reports (``astro report``)."""
