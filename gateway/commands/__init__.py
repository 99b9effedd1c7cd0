"""Signed commands from the backend: admission and reply (core), handlers, their registry.

Pure: the daemon implements :class:`gateway.commands.unit.Unit`, the publisher carries
the messages. docs/mqtt.md ("Commands") is the contract.
"""
