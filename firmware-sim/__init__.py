"""Simulated hardware for technicians and tests.

Each simulator speaks the same bytes as the real device, behind the library
the driver uses: serial readers on a pseudo-terminal (pyserial opens it like
``/dev/ttyUSB0``), BLE tags as BlueZ D-Bus objects. Installed as the
``firmware_sim`` package; run ``kidsafe-sim --help``.
"""
