//! Placeholder: GPU passthrough with VFIO (being written).
