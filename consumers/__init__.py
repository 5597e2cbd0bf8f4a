"""The downstream SDK: ``subscribe`` to a topic and the ``Record``s it yields; depends on settings, schemas and ``kafkalog`` only."""
