"""Evaluation following the paper's protocol (App. B): answer extraction, scoring, sandboxed code runs."""
