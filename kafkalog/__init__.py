"""Reading the Kafka log: the one range reader, exact offset ranges, consumer-group lag and their errors.

Plumbing shared by the stream processors, datasets, the trainer and the
subscription SDK; it knows settings' Kafka clients and schemas, nothing above.
"""
