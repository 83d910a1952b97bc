"""The one vocabulary of checks: single argument values (``values``) and a composed run config (``run``)."""
