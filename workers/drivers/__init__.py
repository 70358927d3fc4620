"""Drivers: libvirt (hypervisor), the guest over SSH (guest), disk images (images).

No Django and no cloud.*: they take plain values and can run against test doubles.
"""
