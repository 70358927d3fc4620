"""Removing the storage pools and domains a test or bench made, volumes included."""

from __future__ import annotations

import libvirt

from workers.drivers.hypervisor import Hypervisor


def remove_pools(hypervisor: Hypervisor) -> None:
    connection = hypervisor.host.connection
    for name in (hypervisor.storage.pool_name, hypervisor.storage.console_pool_name):
        try:
            pool = connection.storagePoolLookupByName(name)
        except libvirt.libvirtError as error:
            if error.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
                continue
            raise
        if pool.isActive():
            pool.refresh(0)
            for volume in pool.listAllVolumes(0):
                volume.delete(0)
            pool.destroy()
        pool.undefine()


def remove_domains_in(hypervisor: Hypervisor) -> None:
    """Destroy every domain whose disks live in this hypervisor's data directory:
    the ones this installation made, and no other's."""
    prefix = hypervisor.storage.data_dir.rstrip("/") + "/"
    for domain in hypervisor.host.connection.listAllDomains(0):
        try:
            xml = domain.XMLDesc(0)
        except libvirt.libvirtError as error:
            # Another installation's domain, undefined since the listing.
            if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                continue
            raise
        if prefix in xml:
            hypervisor.guests.destroy(domain.name(), domain.UUIDString())
