"""Field file formats: raw star-set HDF5, prepared shards, manifests, atomic writes."""
