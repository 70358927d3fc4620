"""The console relay: one long-lived process per hypervisor host that opens
VMs' serial consoles on libvirt and relays their bytes over the channel layer
to the web processes' websocket consumers (see docs/DESIGN.md, "Console")."""
