"""Settings, the local stack launcher and the command line."""
