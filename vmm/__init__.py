"""Virtual machine management through libvirt + QEMU."""
