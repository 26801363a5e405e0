"""Generation: load the SD v1 components, build samplers, sample, train and export."""
