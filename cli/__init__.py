"""The `tracestream` command line: each command builds the settings once and passes them down.

It is a package of its own, on top of every other one, so that `deploy`
(settings, stack) stays below `streams` in the import graph.
"""
