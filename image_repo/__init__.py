"""Image repository: metadata, blob store, catalogue, matching, the image builder."""
