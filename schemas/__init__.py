"""Contracts: Avro schemas, the codec, the schema registry, validation rules."""
