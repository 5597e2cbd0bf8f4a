"""Stream processors (validate, materialize, dataset snapshots) and the producer SDK."""
