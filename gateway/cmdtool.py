"""Send a signed command to a unit and wait for its reply (``gatewayd cmd``, the backend).

Filled in with the command path (issue 12); the layer is reserved here.
"""
