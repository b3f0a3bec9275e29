"""Image repository: metadata, blob store, catalogue, matching, endorsements and trust."""
